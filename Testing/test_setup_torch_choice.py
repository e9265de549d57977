"""Set-up chooses the torch build by itself (``scripts/torch_choice.sh``): the CPU-only build from
PyTorch's CPU index on Linux without ``nvidia-smi``, PyPI's CUDA build with it, and PyPI's build
again where the CPU index cannot be reached. Checked with a fake PATH (an empty folder, or one
holding a fake ``nvidia-smi``) and a CPU index served on 127.0.0.1; nothing is installed.
"""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BASH = shutil.which("bash")
PINS = "torch==2.14.1 torchvision==0.29.1"
PYTORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def choose(path_dir: Path, *, os_type: str = "linux-gnu", settle: bool = False,
           **env: str) -> tuple[str, str]:
    """``(TORCH_SPEC, TORCH_WHY)`` from ``choose_torch`` with ``PATH`` = ``path_dir`` only."""
    script = (f"source {REPO / 'scripts' / 'torch_choice.sh'}\nchoose_torch {os_type}\n"
              + (f"settle_torch_index {sys.executable}\n" if settle else "")
              + 'printf "%s\\n%s\\n" "$TORCH_SPEC" "$TORCH_WHY"')
    proc = subprocess.run([BASH, "-c", script], env={"PATH": str(path_dir), **env},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    spec, why = proc.stdout.splitlines()
    return spec, why


@pytest.fixture
def no_gpu(tmp_path) -> Path:
    empty = tmp_path / "bin-no-gpu"
    empty.mkdir()
    return empty


@pytest.fixture
def with_gpu(tmp_path) -> Path:
    folder = tmp_path / "bin-gpu"
    folder.mkdir()
    fake = folder / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 'fake nvidia-smi'\n")
    fake.chmod(0o755)
    return folder


@pytest.fixture
def local_index():
    """A CPU index on 127.0.0.1 answering ``/whl/cpu/torch/`` (``(url, requested paths)``)."""
    requested: list[str] = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the standard library's name
            requested.append(self.path)
            ok = self.path == "/whl/cpu/torch/"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"<html><body>torch</body></html>" if ok else b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/whl/cpu", requested
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_linux_without_nvidia_smi_chooses_the_cpu_index(no_gpu):
    spec, why = choose(no_gpu)
    assert spec == f"{PINS} --extra-index-url {PYTORCH_CPU_INDEX}"
    assert "no NVIDIA GPU found" in why and "1 GB instead of 5.5 GB" in why
    assert f'POLYPSAM_TORCH_SPEC="{PINS}"' in why  # how to get the CUDA build anyway


def test_nvidia_smi_on_path_chooses_pypis_cuda_build(with_gpu):
    spec, why = choose(with_gpu)
    assert spec == PINS
    assert "NVIDIA driver found" in why


def test_macos_gets_pypis_build(no_gpu):
    spec, why = choose(no_gpu, os_type="darwin23")
    assert spec == PINS and "darwin23" in why


def test_polypsam_torch_spec_wins(with_gpu, no_gpu):
    for folder in (with_gpu, no_gpu):
        spec, why = choose(folder, POLYPSAM_TORCH_SPEC="torch==2.13.0")
        assert spec == "torch==2.13.0" and "POLYPSAM_TORCH_SPEC" in why


def test_reachable_cpu_index_is_kept(no_gpu, local_index):
    url, requested = local_index
    spec, why = choose(no_gpu, settle=True, POLYPSAM_TORCH_CPU_INDEX=url)
    assert spec == f"{PINS} --extra-index-url {url}"
    assert requested == ["/whl/cpu/torch/"]
    assert "no NVIDIA GPU found" in why


def test_unreachable_cpu_index_falls_back_to_pypi_and_says_so(no_gpu):
    url = f"http://127.0.0.1:{closed_port()}/whl/cpu"
    spec, why = choose(no_gpu, settle=True, POLYPSAM_TORCH_CPU_INDEX=url)
    assert spec == PINS
    assert f"{url} cannot be reached" in why and "1 GB instead of 5.5 GB" in why


def test_settle_leaves_other_choices_alone(with_gpu):
    url = f"http://127.0.0.1:{closed_port()}/whl/cpu"
    assert choose(with_gpu, settle=True, POLYPSAM_TORCH_CPU_INDEX=url)[0] == PINS
    assert choose(with_gpu, settle=True, POLYPSAM_TORCH_SPEC="torch==2.13.0",
                  POLYPSAM_TORCH_CPU_INDEX=url)[0] == "torch==2.13.0"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the CPU index is Linux's choice")
def test_setup_sh_torch_says_the_choice_and_installs_nothing(tmp_path, local_index):
    """``bash scripts/setup.sh torch`` in a copy of the scripts: says which torch and why, exits
    before creating ``.venv``. PATH holds only ``dirname`` and ``python3`` (no nvidia-smi)."""
    url, _ = local_index
    (tmp_path / "scripts").mkdir()
    for name in ("setup.sh", "torch_choice.sh", "requirements.txt"):
        shutil.copy(REPO / "scripts" / name, tmp_path / "scripts" / name)
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "dirname").symlink_to(shutil.which("dirname"))
    (fake_bin / "python3").symlink_to(sys.executable)
    proc = subprocess.run([BASH, str(tmp_path / "scripts" / "setup.sh"), "torch"],
                          env={"PATH": str(fake_bin), "POLYPSAM_TORCH_CPU_INDEX": url},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == f"[setup] torch: {PINS} --extra-index-url {url}"
    assert "no NVIDIA GPU found (no nvidia-smi on PATH)" in proc.stdout
    assert not (tmp_path / ".venv").exists()
    assert sorted(os.listdir(tmp_path)) == ["bin", "scripts"]


def fake_wheel(folder: Path, version: str) -> None:
    """A minimal valid wheel ``torch-VERSION`` (metadata only)."""
    import base64
    import hashlib
    import zipfile

    dist = f"torch-{version}.dist-info"
    files = {f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}

    def digest(text: str) -> str:
        raw = hashlib.sha256(text.encode()).digest()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    record = [f"{name},sha256={digest(text)},{len(text)}" for name, text in files.items()]
    files[f"{dist}/RECORD"] = "\n".join(record + [f"{dist}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"torch-{version}-py3-none-any.whl", "w") as archive:
        for name, text in files.items():
            archive.writestr(name, text)


def test_pip_takes_the_cpu_build_of_the_same_pin_when_both_are_offered(tmp_path):
    """Why ``--extra-index-url`` (PyPI kept) is enough: where PyPI offers ``torch 2.14.1`` and the
    CPU index ``2.14.1+cpu``, pip's ``torch==2.14.1`` takes ``+cpu`` (a local version sorts after
    its public one). Local folders stand in for the two indexes; pip runs isolated, offline."""
    fake_wheel(tmp_path / "pypi", "2.14.1")
    fake_wheel(tmp_path / "cpu", "2.14.1+cpu")
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "--isolated", "--no-deps",
                           "--no-index", "--find-links", str(tmp_path / "pypi"), "--find-links",
                           str(tmp_path / "cpu"), "torch==2.14.1", "-d", str(tmp_path / "got")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.listdir(tmp_path / "got") == ["torch-2.14.1+cpu-py3-none-any.whl"]
