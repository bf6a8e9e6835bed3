"""API conformance: every TensorRT name our code uses exists in every supported TensorRT version.

TensorRT cannot be installed here or on CI, so this is what proves the builder and the runner call
real APIs. The name lists (trt_api_<version>.txt, next to this file) are what `dir()` shows of the
real bindings of each version, extracted by scripts/extract_trt_api.py from the
tensorrt-cu1x-bindings wheels. This test walks the source (AST) of the TensorRT modules and checks:

* every `trt.A.B...` attribute chain (`trt` being the module from `import_tensorrt()`);
* every attribute used on a variable that by convention holds a TensorRT object (`builder`,
  `config`, `engine`, `context`, ... in TYPED_VARIABLES; also as `self.engine`, `self.context`).

A name present in only some versions must sit under an `if trt_major() <op> N:` guard (or after an
early-exit `if trt_major() <op> N: raise/return`) that excludes the versions lacking it.
"""

from __future__ import annotations

import ast
import operator
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

HERE = Path(__file__).parent
ROOT = HERE.parent.parent
CHECKED_SOURCES = ["toolkit/engines/tensorrt.py", "toolkit/runtime/trt_runner.py",
                   "toolkit/runtime/trt_plan.py"]

# Variable name -> the TensorRT class it holds (the convention the checked modules document).
TYPED_VARIABLES = {
    "logger": "Logger",
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "error": "ParserError",
    "config": "IBuilderConfig",
    "profile": "IOptimizationProfile",
    "cache": "ITimingCache",
    "tensor": "ITensor",
    "layer": "ILayer",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "inspector": "EngineInspector",
}

_OPS = {ast.GtE: operator.ge, ast.Gt: operator.gt, ast.LtE: operator.le, ast.Lt: operator.lt,
        ast.Eq: operator.eq, ast.NotEq: operator.ne}


def load_versions() -> dict[str, set[str]]:
    """{"10.3": names, "11.4": names} from the committed lists."""
    out = {}
    for path in sorted(HERE.glob("trt_api_*.txt")):
        version = re.match(r"trt_api_(.+)\.txt", path.name).group(1)
        out[version] = {line.strip() for line in path.read_text().splitlines()
                        if line.strip() and not line.startswith("#")}
    return out


def major(version: str) -> int:
    return int(version.split(".")[0])


@dataclass(frozen=True)
class Use:
    name: str  # e.g. "NetworkDefinitionCreationFlag.STRONGLY_TYPED" or "Builder.create_network"
    line: int
    majors: frozenset  # the TensorRT majors this line can run under


def _chain(node: ast.AST) -> list[str] | None:
    """a.b.c -> ["a", "b", "c"]; None when the base is not a plain name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name):
        return [node.id, *reversed(parts)]
    return None


def _guard(test: ast.AST, majors: frozenset) -> tuple[frozenset, frozenset] | None:
    """For `trt_major() <op> N`: the majors where it holds and where it does not."""
    if (isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _OPS
            and isinstance(test.left, ast.Call) and isinstance(test.left.func, ast.Name)
            and test.left.func.id == "trt_major" and isinstance(test.comparators[0], ast.Constant)):
        op, n = _OPS[type(test.ops[0])], test.comparators[0].value
        yes = frozenset(m for m in majors if op(m, n))
        return yes, majors - yes
    return None


def _exits(body: list[ast.stmt]) -> bool:
    return bool(body) and isinstance(body[-1], (ast.Raise, ast.Return))


def collect_uses(source: str, all_majors: frozenset) -> list[Use]:
    uses: list[Use] = []

    def record(node: ast.AST, majors: frozenset) -> None:
        # Only outermost attributes: trt.A.B is one use, "A.B", not also "A".
        inner = {id(sub.value) for sub in ast.walk(node) if isinstance(sub, ast.Attribute)}
        for sub in ast.walk(node):
            if not isinstance(sub, ast.Attribute) or id(sub) in inner:
                continue
            parts = _chain(sub)
            if parts is None:
                continue
            if parts[0] == "trt":
                uses.append(Use(".".join(parts[1:]), sub.lineno, majors))
            elif parts[0] in TYPED_VARIABLES and len(parts) >= 2:
                uses.append(Use(f"{TYPED_VARIABLES[parts[0]]}.{parts[1]}", sub.lineno, majors))
            elif parts[0] == "self" and len(parts) >= 3 and parts[1] in TYPED_VARIABLES:
                uses.append(Use(f"{TYPED_VARIABLES[parts[1]]}.{parts[2]}", sub.lineno, majors))

    def block(stmts: list[ast.stmt], majors: frozenset) -> None:
        for stmt in stmts:
            if isinstance(stmt, ast.If) and (g := _guard(stmt.test, majors)) is not None:
                yes, no = g
                block(stmt.body, yes)
                block(stmt.orelse, no)
                if _exits(stmt.body) and not stmt.orelse:
                    majors = no  # `if trt_major() >= 11: raise ...` guards what follows
                elif _exits(stmt.orelse) and not _exits(stmt.body):
                    majors = yes
                continue
            nested = [f for f in ("body", "orelse", "finalbody") if isinstance(
                getattr(stmt, f, None), list) and getattr(stmt, f) and
                isinstance(getattr(stmt, f)[0], ast.stmt)]
            # Record the statement's own expressions, then recurse into nested blocks.
            for fname, value in ast.iter_fields(stmt):
                if fname in nested or fname == "handlers":
                    continue
                for item in value if isinstance(value, list) else [value]:
                    if isinstance(item, ast.AST):
                        record(item, majors)
            for fname in nested:
                block(getattr(stmt, fname), majors)
            for handler in getattr(stmt, "handlers", []):
                block(handler.body, majors)

    block(ast.parse(source).body, all_majors)
    return uses


def missing_names(name: str, names: set[str]) -> str | None:
    """The first prefix of `name` the version lacks, checking only as deep as the list goes
    (members of classes; an enum value's own attributes are not listed)."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k])
        if k > 1 and not any(n.startswith(".".join(parts[:k - 1]) + ".") for n in names):
            return None  # the parent has no listed members (a value): cannot check deeper
        if prefix not in names:
            return prefix
    return None


def check_source(source: str, versions: dict[str, set[str]], label: str = "<src>") -> list[str]:
    """Problems: names a version that can reach the line lacks."""
    all_majors = frozenset(major(v) for v in versions)
    problems = []
    for use in collect_uses(source, all_majors):
        for version, names in versions.items():
            if major(version) not in use.majors:
                continue
            gap = missing_names(use.name, names)
            if gap is not None:
                problems.append(f"{label}:{use.line}: trt {use.name!r} ({gap!r}) is not in "
                                f"TensorRT {version}; guard it with `if trt_major() ...:`")
    return problems


VERSIONS = load_versions()


def test_name_lists_cover_both_supported_majors():
    assert {major(v) for v in VERSIONS} == {10, 11}
    for names in VERSIONS.values():
        assert len(names) > 1000  # a real extraction, not an empty file
        assert "Builder.build_serialized_network" in names


def test_the_lists_know_the_documented_differences():
    # NVIDIA's 10.x -> 11.x migration guide's removals, seen in the extracted lists themselves.
    v10, v11 = VERSIONS["10.3"], VERSIONS["11.4"]
    for removed in ["NetworkDefinitionCreationFlag.EXPLICIT_BATCH", "BuilderFlag.FP16",
                    "BuilderFlag.INT8", "IBuilderConfig.int8_calibrator",
                    "Builder.platform_has_fast_fp16", "IInt8EntropyCalibrator2"]:
        assert removed in v10 and removed not in v11, removed
    assert "NetworkDefinitionCreationFlag.STRONGLY_TYPED" in v10 & v11


@pytest.mark.parametrize("path", CHECKED_SOURCES)
def test_toolkit_uses_only_names_of_every_supported_version(path):
    source = (ROOT / path).read_text()
    problems = check_source(source, VERSIONS, path)
    assert problems == []


def test_the_checked_modules_use_tensorrt_at_all():
    # Guards against the walker silently finding nothing (e.g. after a rename of `trt`).
    uses = {u.name for p in CHECKED_SOURCES[:2] for u in collect_uses(
        (ROOT / p).read_text(), frozenset({10, 11}))}
    for expected in ["NetworkDefinitionCreationFlag.STRONGLY_TYPED", "Builder.create_network",
                     "OnnxParser.parse_from_file", "ParserError.node_operator",
                     "IBuilderConfig.set_memory_pool_limit", "IOptimizationProfile.set_shape",
                     "Builder.build_serialized_network", "ICudaEngine.num_io_tensors",
                     "ICudaEngine.get_tensor_mode", "IExecutionContext.set_input_shape",
                     "IExecutionContext.set_tensor_address", "IExecutionContext.execute_async_v3",
                     "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY", "IBuilderConfig.DLA_core",
                     "EngineInspector.get_engine_information", "init_libnvinfer_plugins",
                     "Runtime.DLA_core", "Runtime.num_DLA_cores",
                     "IExecutionContext.nvtx_verbosity", "ProfilingVerbosity.LAYER_NAMES_ONLY",
                     "IBuilderConfig.can_run_on_DLA", "INetworkDefinition.get_layer",
                     "IBuilderConfig.add_optimization_profile", "BuilderFlag.SPARSE_WEIGHTS"]:
        assert expected in uses, expected


# ------------------------------------------------------------------ the checker can fail


def test_checker_flags_a_fake_name():
    problems = check_source("trt.NetworkDefinitionCreationFlag.NO_SUCH_FLAG\n", VERSIONS)
    assert len(problems) == 2 and all("NO_SUCH_FLAG" in p for p in problems)
    assert check_source("x = trt.NoSuchClass()\n", VERSIONS)


def test_checker_flags_a_name_removed_in_11_unless_guarded():
    src = "flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)\n"
    problems = check_source(src, VERSIONS)
    assert len(problems) == 1 and "11.4" in problems[0]
    guarded = "if trt_major() < 11:\n    " + src
    assert check_source(guarded, VERSIONS) == []
    wrong_guard = "if trt_major() >= 11:\n    " + src
    assert len(check_source(wrong_guard, VERSIONS)) == 1


def test_checker_understands_else_and_early_exit():
    src = ("def f(trt, config):\n"
           "    if trt_major() >= 11:\n"
           "        x = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY\n"
           "    else:\n"
           "        config.set_flag(trt.BuilderFlag.FP16)\n"
           "    if trt_major() >= 11:\n"
           "        raise RuntimeError\n"
           "    config.int8_calibrator = None\n")
    assert check_source(src, VERSIONS) == []
    unguarded = src.replace("        raise RuntimeError\n", "        pass\n")
    problems = check_source(unguarded, VERSIONS)
    assert len(problems) == 1 and "int8_calibrator" in problems[0]


def test_checker_follows_typed_variables_and_self():
    assert check_source("builder.platform_has_fast_fp16\n", VERSIONS)  # gone in 11
    assert check_source("self.context.execute_async_v2()\n", VERSIONS)  # gone in 10
    assert check_source("self.engine.get_binding_index('x')\n", VERSIONS)
    assert check_source("self.context.execute_async_v3(0)\n", VERSIONS) == []


def test_checker_catches_a_dropped_guard_in_the_real_builder():
    source = (ROOT / "toolkit/engines/tensorrt.py").read_text()
    guard = "        if trt_major() < 11:\n"
    assert guard in source
    mutated = source.replace(guard, "        if False:\n", 1)
    problems = check_source(mutated, VERSIONS)
    assert any("SAME_COMPUTE_CAPABILITY" in p and "10.3" in p for p in problems)


def test_name_lists_say_where_they_come_from():
    for version, wheel in [("10.3", "tensorrt_cu12_bindings-10.3.0-"),
                           ("11.4", "tensorrt_cu13_bindings-11.4.0.106-")]:
        head = (HERE / f"trt_api_{version}.txt").read_text().splitlines()[:2]
        assert wheel in head[0] and head[1].startswith(f"# version: {version}.")


def test_extractor_finds_the_nvidia_entry_points(tmp_path):
    """scripts/extract_trt_api.py stubs exactly the undefined, unversioned, non-Python symbols of
    the libnv* libraries a module needs; checked on a small library built here."""
    import importlib.util
    import shutil
    import subprocess

    if not all(shutil.which(t) for t in ("gcc", "nm", "readelf")):
        pytest.skip("needs gcc, nm and readelf (binutils)")
    spec = importlib.util.spec_from_file_location("extract_trt_api",
                                                  ROOT / "scripts" / "extract_trt_api.py")
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    (tmp_path / "dep.c").write_text("int createThing_INTERNAL(void) { return 1; }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "libnvthing.so.10"),
                    str(tmp_path / "dep.c")], check=True)
    (tmp_path / "mod.c").write_text(
        "#include <string.h>\n"
        "int createThing_INTERNAL(void); void *PyList_New(long);\n"
        "int use(const char *s) { return createThing_INTERNAL() + (int) strlen(s)"
        " + (PyList_New(0) != 0); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(tmp_path / "mod.so"),
                    str(tmp_path / "mod.c"), f"-L{tmp_path}", "-l:libnvthing.so.10"], check=True)
    assert ex.nvidia_symbols(tmp_path / "mod.so") == ["createThing_INTERNAL"]
    assert ex.nvidia_libraries(tmp_path / "mod.so") == ["libnvthing.so.10"]
