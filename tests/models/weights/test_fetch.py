"""``tomoflow weights fetch|list`` against a local file server, and the missing-weights message."""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from flows.cli import main


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An HTTP server on 127.0.0.1 serving a folder: ``(base URL, folder)``."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", folder
    finally:
        server.shutdown()
        server.server_close()


def test_fetch_refuses_content_that_does_not_match_the_hash_in_its_name(torch_home: Path, mirror, capsys) -> None:
    base, folder = mirror
    (folder / "vgg16-397923af.pth").write_bytes(b"not the weights")  # sha256 does not start 397923af
    assert main(["weights", "fetch", "--model", "vgg16", "--mirror", base]) == 2
    err = capsys.readouterr().err
    assert "does not match the SHA-256 prefix '397923af'" in err and "Traceback" not in err
    cache = torch_home / "hub" / "checkpoints"
    assert not list(cache.glob("*")), "nothing half-checked may stay in the cache"


def test_fetch_downloads_into_torchvisions_cache_and_list_shows_it(torch_home: Path, mirror, monkeypatch,
                                                                   capsys) -> None:
    import models.weights.fetch as wf

    base, folder = mirror
    payload = b"weights of a test"
    digest = hashlib.sha256(payload).hexdigest()
    name = f"vgg16-{digest[:8]}.pth"
    (folder / name).write_bytes(payload)
    monkeypatch.setattr(wf, "weights_url", lambda n: f"https://download.pytorch.org/models/{name}")
    assert main(["weights", "fetch", "--model", "vgg16", "--mirror", base]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    target = torch_home / "hub" / "checkpoints" / name
    assert row["status"] == "downloaded" and Path(row["file"]) == target and target.read_bytes() == payload
    # Again: already there with a good hash, nothing downloaded.
    assert main(["weights", "fetch", "--model", "vgg16", "--mirror", base + "/nowhere"]) == 0
    assert json.loads(capsys.readouterr().out)["status"] == "cached"

    assert main(["weights", "list"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    vgg = next(r for r in rows if r["name"] == "vgg16")
    assert vgg["present"] and vgg["hash_ok"] is True and vgg["bytes"] == len(payload)
    assert Path(vgg["file"]) == target


def test_fetch_names_the_folder_when_the_host_cannot_be_reached(torch_home: Path, capsys) -> None:
    assert main(["weights", "fetch", "--model", "vgg16", "--mirror", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert str(torch_home / "hub" / "checkpoints") in err and "copy it into" in err


def test_missing_weights_message_names_fetch_and_the_scratch_parameter(torch_home: Path) -> None:
    from models.weights.resolve import WeightsNotFoundError, resolve_weights

    with pytest.raises(WeightsNotFoundError) as info:
        resolve_weights("inception_v3", "imagenet")
    message = str(info.value)
    assert len(message) < 600, len(message)
    assert "tomoflow weights fetch" in message
    assert 'config={"model":{"weights":"none"}}' in message
    assert str(torch_home / "hub" / "checkpoints") in message and "inception_v3_google-0cc3c7bd.pth" in message
    assert message.endswith(".") and "\n" not in message


def test_list_reads_a_cached_file_a_run_would_load(torch_home: Path, capsys) -> None:
    from models.weights.resolve import resolve_weights

    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save({"w": torch.zeros(1)}, cache / "vgg16_bn-6c64b313.pth")
    assert resolve_weights("vgg16_bn", "imagenet") == cache / "vgg16_bn-6c64b313.pth"
    assert main(["weights", "list"]) == 0
    rows = {r["name"]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert rows["vgg16_bn"]["present"] and rows["vgg16_bn"]["hash_ok"] is False  # a local stand-in, not the real file
    assert not rows["vgg16"]["present"] and not rows["inception_v3"]["present"]


def test_fetch_with_torch_home_a_file_gives_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    """TORCH_HOME a regular file: one line naming it, no traceback."""
    home = tmp_path / "torch-home"
    home.write_text("oops")
    monkeypatch.setenv("TORCH_HOME", str(home))
    assert main(["weights", "fetch", "--model", "vgg16", "--mirror", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"TORCH_HOME={home} must be a folder" in err and "Traceback" not in err


def test_fetch_from_a_mirror_that_never_answers_times_out(torch_home: Path, capsys) -> None:
    """A mirror that accepts and never answers: --timeout, one line, nothing cached."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts (the kernel completes the handshake), never answers
    try:
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        assert main(["weights", "fetch", "--model", "vgg16", "--mirror", base, "--timeout", "1"]) == 2
    finally:
        listener.close()
    err = capsys.readouterr().err
    assert "did not answer within 1 s" in err and "--timeout" in err and err.count("\n") == 1
    assert not list((torch_home / "hub" / "checkpoints").glob("*")), "nothing may stay in the cache"
