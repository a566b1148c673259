"""codegen, scaffold and check: exact bytes, exact ops, a sufficient arena, code that compiles."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DATA, run_cli

pytestmark = pytest.mark.slow

TFLM_ROOT = os.environ.get("TFLM_ROOT", "")
WARN = ["-Wall", "-Wextra", "-Werror", "-std=c++17"]


def _tflm_includes() -> list[str]:
    d = Path(TFLM_ROOT) / "tensorflow" / "lite" / "micro" / "tools" / "make" / "downloads"
    return ["-isystem", TFLM_ROOT, "-isystem", str(d / "flatbuffers" / "include"), "-isystem", str(d / "gemmlowp"),
            "-isystem", str(d / "ruy")]


@pytest.fixture(scope="module")
def generated(models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cg") / "out"
    labels = out.parent / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    proc = run_cli("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out), "--labels", str(labels),
                   "--name", "digits")
    assert proc.returncode == 0, proc.stderr
    return out


def test_array_bytes_equal_the_model(generated: Path, models: dict[str, Path]) -> None:
    text = (generated / "model_data.cc").read_text()
    assert "alignas(16) const unsigned char g_digits_model_data[]" in text
    body = text.split("= {", 1)[1].split("};", 1)[0]
    data = bytes(int(h, 16) for h in re.findall(r"0x([0-9a-f]{2})", body))
    assert data == models["int8"].read_bytes()
    assert f"g_digits_model_data_len = {len(data)};" in text


def test_resolver_registers_exactly_the_models_ops(generated: Path, models: dict[str, Path]) -> None:
    from edgekit.analysis.graph import read_graph
    from edgekit.codegen.generate import resolver_methods

    text = (generated / "op_resolver.h").read_text()
    methods = re.findall(r"resolver\.(Add\w+)\(\)", text)
    by_method = {m: op for op, m in resolver_methods().items()}
    ops = sorted(by_method[m] for m in methods)
    assert ops == read_graph(models["int8"].read_bytes()).ops
    assert f"constexpr int kNumOps = {len(ops)};" in text


def test_arena_constant_covers_the_measured_arena(generated: Path, models: dict[str, Path]) -> None:
    out = json.loads(run_cli("analyze", str(models["int8"]), "-t", "cortex-m4", "--json").stdout)
    settings = (generated / "model_settings.h").read_text()
    constant = int(re.search(r"kTensorArenaSize = (\d+);", settings).group(1))  # type: ignore[union-attr]
    measured = int(re.search(r"kTensorArenaMeasuredHost = (\d+);", settings).group(1))  # type: ignore[union-attr]
    assert measured == out["arena_bytes"]
    assert constant >= measured and constant % 16 == 0
    assert "measured with the TFLM interpreter on the host" in settings
    assert 'kLabels[kNumLabels] = {' in settings and '"digit 9"' in settings


def test_output_is_deterministic(generated: Path, models: dict[str, Path], tmp_path: Path) -> None:
    labels = generated.parent / "labels.txt"
    again = tmp_path / "again"
    assert run_cli("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(again), "--labels", str(labels),
                   "--name", "digits").returncode == 0
    for f in generated.iterdir():
        assert (again / f.name).read_bytes() == f.read_bytes(), f.name


def _main_cc(path: Path, ns: str) -> Path:
    path.write_text(
        '#include "model_data.h"\n#include "model_settings.h"\n'
        f"int main() {{ return static_cast<int>({ns}::kTensorArenaSize + g_{ns}_model_data_len\n"
        f"    + {ns}::kInput0Dims[0] + {ns}::kNumLabels) & 1; }}\n")
    return path


def test_generated_code_compiles_on_the_host(generated: Path, tmp_path: Path) -> None:
    if shutil.which("g++") is None:
        pytest.skip("no host g++")
    main = _main_cc(tmp_path / "main.cc", "digits")
    subprocess.run(["g++", *WARN, f"-I{generated}", str(main), str(generated / "model_data.cc"), "-o",
                    str(tmp_path / "a.out")], check=True, capture_output=True, text=True)
    assert subprocess.run([str(tmp_path / "a.out")], check=False).returncode in (0, 1)


def test_generated_code_compiles_for_cortex_m4(generated: Path, tmp_path: Path) -> None:
    if shutil.which("arm-none-eabi-g++") is None:
        pytest.skip("arm-none-eabi-g++ not installed (Debian: gcc-arm-none-eabi libstdc++-arm-none-eabi-newlib)")
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfloat-abi=hard", "-mfpu=fpv4-sp-d16", *WARN, f"-I{generated}"]
    main = _main_cc(tmp_path / "main.cc", "digits")
    for src in (main, generated / "model_data.cc"):
        proc = subprocess.run(["arm-none-eabi-g++", *flags, "-c", str(src), "-o", str(tmp_path / (src.stem + ".o"))],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
    objdump = subprocess.run(["arm-none-eabi-objdump", "-h", str(tmp_path / "model_data.o")], capture_output=True,
                             text=True, check=True).stdout
    assert re.search(r"\.rodata\S*\s+[0-9a-f]+\s+[0-9a-f]+\s+[0-9a-f]+\s+[0-9a-f]+\s+2\*\*4", objdump)


def test_resolver_compiles_against_tflm(generated: Path, tmp_path: Path) -> None:
    if not TFLM_ROOT:
        pytest.skip("TFLM_ROOT is not set: the op resolver compiles against a tflite-micro checkout")
    src = tmp_path / "r.cc"
    src.write_text('#include "op_resolver.h"\nvoid f();\nvoid f() { digits::OpResolver r; digits::RegisterOps(r); }\n')
    for cxx in ("g++", "arm-none-eabi-g++"):
        if shutil.which(cxx) is None:
            continue
        extra = ["-mcpu=cortex-m4", "-mthumb"] if cxx.startswith("arm") else []
        proc = subprocess.run([cxx, *extra, *WARN, "-DTF_LITE_STATIC_MEMORY", f"-I{generated}", *_tflm_includes(),
                               "-c", str(src), "-o", str(tmp_path / "r.o")], capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_bad_name_is_sanitized_and_compiles(models: dict[str, Path], tmp_path: Path) -> None:
    odd = tmp_path / '1-bad"name.tflite'
    odd.write_bytes(models["int8"].read_bytes())
    out = tmp_path / "out"
    proc = run_cli("codegen", str(odd), "-t", "cortex-m4", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "g_m_1_bad_name_model_data" in (out / "model_data.cc").read_text()
    assert '"' not in (out / "model_data.cc").read_text().splitlines()[0]
    if shutil.which("g++"):
        main = _main_cc(tmp_path / "main.cc", "m_1_bad_name")
        subprocess.run(["g++", *WARN, f"-I{out}", str(main), str(out / "model_data.cc"), "-o", str(tmp_path / "b")],
                       check=True, capture_output=True)


@pytest.mark.parametrize("args, needle, code", [
    (["--section", 'x"); int evil;'], "not a valid section name", 2),
    (["-t", str(DATA / "targets" / "valid_tiny_board.toml")], "does not fit", 1),  # a verdict, as `check` gives
])
def test_refusals(models: dict[str, Path], tmp_path: Path, args: list[str], needle: str, code: int) -> None:
    cmd = ["codegen", str(models["int8"]), "-o", str(tmp_path / "o"), *args]
    if "-t" not in args:
        cmd += ["-t", "cortex-m4"]
    proc = run_cli(*cmd)
    assert proc.returncode == code and needle in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


def test_over_budget_allowed_explicitly(models: dict[str, Path], tmp_path: Path) -> None:
    tiny = str(DATA / "targets" / "valid_tiny_board.toml")
    proc = run_cli("codegen", str(models["int8"]), "-t", tiny, "-o", str(tmp_path / "o"))
    assert "by " in proc.stderr and "--allow-over-budget" in proc.stderr
    proc = run_cli("codegen", str(models["int8"]), "-t", tiny, "-o", str(tmp_path / "o"), "--allow-over-budget")
    assert proc.returncode == 0, proc.stderr


def test_ops_tflm_lacks_are_refused(models: dict[str, Path], tmp_path: Path) -> None:
    proc = run_cli("codegen", str(models["topk"]), "-t", "cortex-m4", "-o", str(tmp_path / "o"))
    assert proc.returncode == 1 and "TOPK_V2" in proc.stderr  # does not fit: exit 1 everywhere


def test_labels_with_the_wrong_count(models: dict[str, Path], tmp_path: Path) -> None:
    labels = tmp_path / "l.txt"
    labels.write_text("a\nb\n")
    proc = run_cli("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(tmp_path / "o"), "--labels",
                   str(labels))
    assert proc.returncode == 2 and "2 lines but the model has 10 outputs" in proc.stderr


def test_existing_output_refused_and_forced(models: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.c").write_text("int x;")
    proc = run_cli("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out))
    assert proc.returncode == 2 and "--force" in proc.stderr and (out / "mine.c").exists()
    # --force replaces only what edgekit wrote: never the user's own file
    proc = run_cli("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out), "--force")
    assert proc.returncode == 2 and "mine.c" in proc.stderr and (out / "mine.c").read_text() == "int x;"
    (out / "mine.c").unlink()
    assert run_cli("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out)).returncode == 0
    first = (out / "model_data.cc").stat().st_ino
    assert run_cli("codegen", str(models["int8"]), "-t", "cortex-m4", "-o", str(out), "--force").returncode == 0
    assert (out / "model_data.cc").stat().st_ino != first  # replaced by the new run's file
    assert [p.name for p in tmp_path.iterdir()] == ["o"]


MCU = ["cortex-m0plus", "cortex-m4", "cortex-m7", "cortex-m33", "cortex-m55"]


@pytest.mark.parametrize("target", MCU)
@pytest.mark.parametrize("build", ["cmake", "arduino", "zephyr"])
def test_mcu_scaffolds_render_for_every_target(models: dict[str, Path], tmp_path: Path, target: str,
                                               build: str) -> None:
    from edgekit.codegen.scaffold import scaffold

    r = scaffold(models["int8"], target, build, tmp_path / "p")
    manifest = json.loads((tmp_path / "p" / "edgekit-project.json").read_text())
    assert manifest["target"] == target and manifest["build"] == build
    assert manifest["model"]["sha256"] and manifest["arena"]["constant_bytes"] >= manifest["arena"][
        "measured_host_bytes"]
    for rel, digest in manifest["files"].items():
        import hashlib

        assert hashlib.sha256((tmp_path / "p" / rel).read_bytes()).hexdigest() == digest
    texts = "".join(p.read_text() for p in (tmp_path / "p").rglob("*") if p.is_file() and p.suffix != ".tflite")
    assert "{{" not in texts and "{%" not in texts
    assert "m-ready" in texts  # the benchmark protocol's device side is in every firmware
    assert len(r.files) >= 8


def test_phone_scaffolds(tmp_path: Path, models: dict[str, Path]) -> None:
    from edgekit.codegen.scaffold import scaffold

    for target, delegate in (("android-arm64-cpu", "setUseXNNPACK"), ("android-gpu", "GpuDelegate")):
        out = tmp_path / target
        scaffold(models["float"], target, "android", out)
        assert (out / "app/src/main/assets/model.tflite").read_bytes() == models["float"].read_bytes()
        kt = (out / "app/src/main/java/com/example/edgekit/EdgekitModel.kt").read_text()
        assert delegate in kt
        assert f'"--target", "{target}"' in (out / "edgekit-check.gradle").read_text()


def test_ios_scaffold_and_check_gate(tmp_path: Path, models: dict[str, Path]) -> None:
    from edgekit.codegen.scaffold import scaffold

    fit_out = tmp_path / "fit"
    proc = run_cli("fit", str(models["keras"]), "-t", "ios-ane", "--eval", str(models["calib"]), "-o", str(fit_out),
                   "--candidates", "fp16", env={"EDGEKIT_CACHE_DIR": str(tmp_path / "c")})
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "ios"
    scaffold(fit_out / "model.mlpackage", "ios-ane", "ios", out)
    assert (out / "model.mlpackage" / "Manifest.json").is_file()
    script = out / "edgekit-check-build-phase.sh"
    assert os.access(script, os.X_OK)
    env = {**os.environ, "SRCROOT": str(out), "EDGEKIT": str(Path(os.sys.executable).with_name("edgekit"))}
    if Path(env["EDGEKIT"]).exists():
        proc2 = subprocess.run(["sh", str(script)], capture_output=True, text=True, env=env, check=False)
        assert proc2.returncode == 0 and "ok" in proc2.stdout, proc2.stderr


def test_check_is_a_terse_gate(models: dict[str, Path]) -> None:
    ok = run_cli("check", str(models["int8"]), "-t", "cortex-m4")
    assert ok.returncode == 0 and ok.stdout.startswith("edgekit check cortex-m4: ok")
    over = run_cli("check", str(models["int8"]), "-t", str(DATA / "targets" / "valid_tiny_board.toml"), "--json")
    assert over.returncode == 1
    data = json.loads(over.stdout)
    assert data["fits"] is False and "layers" not in data
    bad = run_cli("check", "/nonexistent.tflite", "-t", "cortex-m4")
    assert bad.returncode == 2


@pytest.mark.parametrize("build", ["cmake", "zephyr", "arduino"])
def test_scaffold_that_does_not_fit_exits_1_and_writes_nothing(models: dict[str, Path], tmp_path: Path,
                                                               build: str) -> None:
    tiny = str(DATA / "targets" / "valid_tiny_board.toml")
    proc = run_cli("scaffold", str(models["int8"]), "-t", tiny, "-b", build, "-o", str(tmp_path / "fw"))
    assert proc.returncode == 1 and "does not fit" in proc.stderr and "--allow-over-budget" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "fw").exists()
    topk = run_cli("scaffold", str(models["topk"]), "-t", "cortex-m4", "-b", build, "-o", str(tmp_path / "fw"))
    assert topk.returncode == 1 and "TOPK_V2" in topk.stderr and not (tmp_path / "fw").exists()


def test_phone_scaffold_that_does_not_fit_exits_1(models: dict[str, Path], tmp_path: Path) -> None:
    small = tmp_path / "small-phone.toml"
    small.write_text('schema_version = 1\ninherit = "android-arm64-cpu"\n[budgets]\nflash_bytes = 1000\n')
    proc = run_cli("scaffold", str(models["float"]), "-t", str(small), "-b", "android", "-o", str(tmp_path / "app"))
    assert proc.returncode == 1 and "does not fit" in proc.stderr and "flash" in proc.stderr
    assert not (tmp_path / "app").exists()
    ok = run_cli("scaffold", str(models["float"]), "-t", str(small), "-b", "android", "-o", str(tmp_path / "app"),
                 "--allow-over-budget")
    assert ok.returncode == 0, ok.stderr


def test_mlperf_model_ids_and_their_input_conventions(models: dict[str, Path], tmp_path: Path) -> None:
    from edgekit.codegen.scaffold import scaffold

    scaffold(models["int8"], "cortex-m4", "cmake", tmp_path / "kws", mlperf_model="kws01")
    runner = (tmp_path / "kws" / "src" / "runner.cc").read_text()
    assert 'Line("m-model-[kws01]");' in runner and 'kMlperfModel[] = "kws01"' in runner
    assert "- 128u" not in runner  # kws01: int8 as it is
    manifest = json.loads((tmp_path / "kws" / "edgekit-project.json").read_text())
    assert manifest["mlperf_model"] == "kws01"
    scaffold(models["int8"], "cortex-m4", "cmake", tmp_path / "ic", mlperf_model="ic01")
    assert "g_db[i] - 128u" in (tmp_path / "ic" / "src" / "runner.cc").read_text()
    scaffold(models["int8"], "cortex-m4", "cmake", tmp_path / "plain")
    plain = (tmp_path / "plain" / "src" / "runner.cc").read_text()
    assert 'Line("m-model-[cnn_int8]");' in plain and 'kMlperfModel[] = "none"' in plain
    # the digits CNN is no autoencoder (64 inputs, 10 outputs) and its float form takes no uint8 pixels
    ad = run_cli("scaffold", str(models["int8"]), "-t", "cortex-m4", "-b", "cmake", "-o", str(tmp_path / "ad"),
                 "--mlperf-model", "ad01")
    assert ad.returncode == 2 and "64 input and 10 output values" in ad.stderr and not (tmp_path / "ad").exists()
    ic = run_cli("scaffold", str(models["float"]), "-t", "cortex-m4", "-b", "cmake", "-o", str(tmp_path / "icf"),
                 "--mlperf-model", "ic01")
    assert ic.returncode == 2 and "this model's input is float32" in ic.stderr
    bad = run_cli("scaffold", str(models["int8"]), "-t", "cortex-m4", "-b", "cmake", "-o", str(tmp_path / "x"),
                  "--mlperf-model", "ic02")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_zephyr_project_files(models: dict[str, Path], tmp_path: Path) -> None:
    from edgekit.codegen.scaffold import scaffold

    scaffold(models["int8"], "cortex-m4", "zephyr", tmp_path / "z")
    z = tmp_path / "z"
    assert (z / "app.overlay").is_file() and not (z / "boards" / "app.overlay").exists()  # the name Zephyr reads
    assert "edgekit,uart = &" not in (z / "app.overlay").read_text().split("/*", 2)[1]  # console UART by default
    conf = (z / "prj.conf").read_text()
    assert "CONFIG_TENSORFLOW_LITE_MICRO_CMSIS_NN_KERNELS=y" in conf and "CONFIG_FPU=y" in conf
    assert "NEWLIB" not in conf and "CONFIG_UART_INTERRUPT_DRIVEN=y" in conf and "CONFIG_UART_CONSOLE=n" in conf
    assert "CONFIG_SEMIHOST=y" in (z / "boards" / "mps2_an385.conf").read_text()
    assert "set(BOARD nrf52840dk/nrf52840)" in (z / "CMakeLists.txt").read_text()
    board = (z / "src" / "board_zephyr.cc").read_text()
    assert "DT_CHOSEN(zephyr_console)" in board and "k_cycle_get_32" in board and "sys_reboot" not in board
    readme = (z / "README.md").read_text()
    assert "west build" in readme and "qemu-system-arm" in readme and "edgekit bench" in readme
    scaffold(models["int8"], "cortex-m0plus", "zephyr", tmp_path / "m0", zephyr_uart="uart1")
    overlay = (tmp_path / "m0" / "app.overlay").read_text()
    assert "edgekit,uart = &uart1;" in overlay and "&uart1 {" in overlay
    conf = (tmp_path / "m0" / "prj.conf").read_text()
    assert "CONFIG_FPU" not in conf and "CONFIG_UART_CONSOLE=n" not in conf
    bad = run_cli("scaffold", str(models["int8"]), "-t", "cortex-m4", "-b", "zephyr", "-o", str(tmp_path / "b"),
                  "--zephyr-uart", "uart0; evil")
    assert bad.returncode == 2 and "devicetree node label" in bad.stderr


def test_cmake_scaffold_readme_and_library_prerequisites(models: dict[str, Path], tmp_path: Path) -> None:
    from edgekit.codegen.scaffold import scaffold

    scaffold(models["int8"], "cortex-m7", "cmake", tmp_path / "fw")
    cml = (tmp_path / "fw" / "CMakeLists.txt").read_text()
    for needle in ("numpy", "Pillow", "-j$(nproc)", "TARGET_ARCH=cortex-m7+fp", "/usr/bin/ for Debian",
                   "string(MAKE_C_IDENTIFIER \"TFLM_LIB_${TFLM_ARCH}\""):
        assert needle in cml, needle
    readme = (tmp_path / "fw" / "README.md").read_text()
    for needle in ("TARGET_ARCH=cortex-m7+fp", "-DBOARD=qemu", "qemu-system-arm -M mps2-an386",
                   "edgekit bench", "arena_min"):
        assert needle in readme, needle


def test_manifest_names_a_user_profile_by_path(models: dict[str, Path], tmp_path: Path) -> None:
    """`edgekit bench PROJECT` reads the target from the manifest: a profile given as a file must be found again."""
    from edgekit.codegen.scaffold import scaffold
    from edgekit.profiles import load_profile

    board = DATA / "targets" / "valid_qemu_cortex_m3.toml"
    scaffold(models["int8"], str(board), "cmake", tmp_path / "fw")
    target = json.loads((tmp_path / "fw" / "edgekit-project.json").read_text())["target"]
    assert target == str(board.resolve()) and load_profile(target).cpu == "cortex-m3"
    scaffold(models["int8"], "cortex-m4", "cmake", tmp_path / "m4")
    assert json.loads((tmp_path / "m4" / "edgekit-project.json").read_text())["target"] == "cortex-m4"
