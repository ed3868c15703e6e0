"""Fine-tuning a searched arch: the inherited network at epoch 0, the checkpoint, bit-for-bit resume, settings on
resume, the export of a fine-tuned checkpoint, and DDP with 2 gloo processes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from vitres_deploy.archfile import resolve_arch
from vitres_deploy.checkpoint import load_checkpoint, load_finetuned
from vitres_deploy.cli import main
from vitres_deploy.data import open_checkpoint_data
from vitres_deploy.errors import CheckpointError, RunDirError
from vitres_deploy.evaluate import evaluate_model
from vitres_deploy.export.bundle import REFERENCE, read_manifest
from vitres_deploy.files import sha256_file
from vitres_deploy.finetune import FinetuneConfig, finetune, prepare_finetune
from vitres_deploy.train import weight_digest

QUICK = {"steps_per_epoch": 2, "batch_size": 32, "eval_limit": 100}
ARCH = "random:3"
pytestmark = pytest.mark.usefixtures("fmnist_dir", "torch_one_thread")


def _flags(settings: dict) -> list[str]:
    return [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, small_supernet, fmnist_dir):
    """A 1-epoch, 2-step fine-tuning run of ARCH through the CLI with --json: its folder and its report."""
    out = tmp_path_factory.mktemp("finetune") / "run"
    result = CliRunner().invoke(main, ["finetune", "--supernet", str(small_supernet), "--arch", ARCH, "--out",
                                       str(out), "--epochs", "1", *_flags(QUICK), "--json"])
    assert result.exit_code == 0, result.output
    return out, json.loads(result.stdout)


def test_the_network_at_epoch_0_is_the_supernets_extracted_network(small_supernet, tmp_path):
    """Before any step the fine-tuned network computes what the supernet computes for the arch, and a
    fine-tuned checkpoint of it loads back to the same network."""
    run = prepare_finetune(FinetuneConfig(epochs=1, **QUICK), small_supernet, ARCH, tmp_path / "run")
    source = load_checkpoint(small_supernet)
    space = source.space
    arch = resolve_arch(ARCH, space)
    assert run.start_epoch == 0 and run.net.arch == arch
    x = torch.randn(4, space.in_chans, space.image_size, space.image_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = source.supernet.eval()(x, archs=[arch])
        got = run.net.eval()(x)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    path = tmp_path / "epoch0.safetensors"
    run.save(path, {**run.meta, "epoch": 0}, {})
    loaded = load_finetuned(path)
    assert loaded.meta["kind"] == "finetuned" and loaded.arch == arch
    with torch.inference_mode():
        assert torch.equal(loaded.model(x), got)


def test_from_scratch_starts_from_fresh_seeded_weights(small_supernet, tmp_path):
    """--from-scratch: the arch's network freshly initialised (not the supernet's weights), the same for the same
    seed and another for another seed; the choice is recorded with the settings."""
    source = load_checkpoint(small_supernet)
    arch = resolve_arch(ARCH, source.space)
    inherited = weight_digest(source.supernet.extract(arch))
    runs = [prepare_finetune(FinetuneConfig(epochs=1, from_scratch=True, seed=seed, **QUICK), small_supernet, ARCH,
                             tmp_path / f"run{i}") for i, seed in enumerate((0, 0, 1))]
    digests = [weight_digest(r.net) for r in runs]
    assert digests[0] == digests[1] != digests[2] and inherited not in digests
    assert runs[0].net.arch == arch and runs[0].meta["finetune_config"]["from_scratch"] is True


def test_a_finetuned_checkpoint_records_its_arch_supernet_and_settings(finetuned, small_supernet, fmnist):
    out, report = finetuned
    final = out / "finetuned.safetensors"
    assert report["finetuned"] == str(final)
    assert [e["epoch"] for e in report["epochs"]] == [1] and 0.0 <= report["epochs"][0]["holdout_top1"] <= 1.0
    loaded = load_finetuned(final)
    assert loaded.arch == resolve_arch(ARCH, fmnist)
    meta = loaded.meta
    assert meta["kind"] == "finetuned" and meta["epoch"] == 1 and meta["finetune_config"]["batch_size"] == 32
    assert meta["supernet"]["file"] == small_supernet.name
    assert meta["supernet"]["sha256"] == sha256_file(small_supernet)
    assert meta["world_size"] == 1 and "torch" in meta["packages"]
    assert meta["data"]["holdout"] == load_checkpoint(small_supernet).data["holdout"]
    assert not loaded.optimizer_tensors and load_finetuned(out / "last.safetensors").optimizer_tensors
    inherited = load_checkpoint(small_supernet).supernet.extract(loaded.arch)
    assert weight_digest(inherited) != weight_digest(loaded.model)  # two steps moved the weights
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1]
    assert {"loss", "lr", "images_per_s", "seconds", "holdout_top1"} <= set(log[0])
    with pytest.raises(CheckpointError, match="is a fine-tuned checkpoint of one arch, not a supernet"):
        load_checkpoint(final)


class _Interrupted(Exception):
    """An interruption of a run right after an epoch's checkpoint."""


def _interrupt_after(epoch: int):
    """An ``on_epoch`` that interrupts the run once ``epoch`` is written."""
    def on_epoch(record: dict) -> None:
        if record["epoch"] == epoch:
            raise _Interrupted
    return on_epoch


def test_resume_continues_bit_for_bit(small_supernet, tmp_path):
    cfg = FinetuneConfig(epochs=2, **QUICK)
    straight = finetune(cfg, small_supernet, ARCH, tmp_path / "a", progress=False)
    with pytest.raises(_Interrupted):
        finetune(cfg, small_supernet, ARCH, tmp_path / "b", progress=False, on_epoch=_interrupt_after(1))
    with open(tmp_path / "b" / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')  # a log line torn by the interruption
    resumed = finetune(cfg, small_supernet, ARCH, tmp_path / "b", resume=True, progress=False)
    a, b = load_finetuned(straight), load_finetuned(resumed)
    assert weight_digest(a.model) == weight_digest(b.model)
    assert [json.loads(line)["epoch"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert b.meta["epoch"] == 2


def test_resume_refuses_changed_settings_naming_the_flag(finetuned, small_supernet):
    out, _ = finetuned
    args = ["finetune", "--supernet", str(small_supernet), "--out", str(out), "--resume", "--epochs", "1",
            *_flags(QUICK)]
    result = CliRunner().invoke(main, [*args, "--arch", ARCH, "--lr", "0.5"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: cannot resume {out}: it was fine-tuned with "
                                    f"--lr={FinetuneConfig().lr!r}, now lr=0.5")
    result = CliRunner().invoke(main, [*args, "--arch", "min"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: cannot resume {out}: it was fine-tuned with --arch=")
    with pytest.raises(RunDirError, match="it was fine-tuned with batch_size=") as error:
        finetune(FinetuneConfig(epochs=2, **{**QUICK, "batch_size": 64}), small_supernet, ARCH, out, resume=True,
                 progress=False)
    assert error.value.field == "batch_size"
    with pytest.raises(RunDirError, match="already holds a fine-tuning run: pass resume to continue it"):
        finetune(FinetuneConfig(epochs=1, **QUICK), small_supernet, ARCH, out, progress=False)


def test_export_takes_the_finetuned_checkpoint_and_serves_its_weights(finetuned, small_supernet, tmp_path):
    """`export --supernet finetuned.safetensors`: the bundle's ONNX computes the fine-tuned network (not the
    supernet's), and the manifest names the fine-tuned checkpoint beside its supernet."""
    import onnxruntime as ort

    out, _ = finetuned
    ckpt = out / "finetuned.safetensors"
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", "--supernet", str(ckpt), "--arch", ARCH, "--formats", "onnx",
                                       "--batch-range", "1:4:16", "--eval-limit", "64", "--no-simplify", "--out",
                                       str(bundle), "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output + result.stderr
    manifest = read_manifest(bundle).to_dict()
    record = manifest["supernet"]
    assert record["file"] == small_supernet.name and record["sha256"] == sha256_file(small_supernet)
    assert record["finetuned"]["file"] == ckpt.name and record["finetuned"]["sha256"] == sha256_file(ckpt)
    assert record["finetuned"]["epochs"] == 1
    assert ("static", "supernet") not in {(c["artifact"], c["check"]) for c in manifest["checks"]}
    ref = np.load(bundle / REFERENCE)
    x = ref["inputs"][:5]
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x})[0]
    model = load_finetuned(ckpt).model
    inherited = load_checkpoint(small_supernet).supernet.extract(model.arch).eval()
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
        before = inherited(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-3)
    np.testing.assert_allclose(ref["logits"][:5], expected, atol=1e-5, rtol=1e-4)
    assert np.abs(expected - before).max() > 1e-5  # the fine-tuned weights, not the supernet's
    assert CliRunner().invoke(main, ["verify", str(bundle)]).exit_code == 0


def test_export_of_a_finetuned_checkpoint_as_another_arch_is_one_line(finetuned, tmp_path):
    out, _ = finetuned
    bundle = tmp_path / "bundle"
    result = CliRunner().invoke(main, ["export", "--supernet", str(out / "finetuned.safetensors"), "--arch", "max",
                                       "--out", str(bundle)])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: arch ")
    assert "is not the arch finetuned.safetensors was fine-tuned as" in lines[0]
    assert "Traceback" not in result.output and not bundle.exists()


def test_evaluate_takes_the_finetuned_checkpoint_and_its_arch_only(finetuned, fmnist_dir):
    out, _ = finetuned
    final = str(out / "finetuned.safetensors")
    result = CliRunner().invoke(main, ["evaluate", "--supernet", final, "--arch", ARCH, "--batch-size", "250",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    loaded = load_finetuned(final)
    expected = evaluate_model(loaded.model, open_checkpoint_data(loaded), "holdout", 250)
    assert report["top1"] == expected.top1 and report["images"] == expected.images > 0
    assert report["arch_hash"] == loaded.arch.hash
    wrong = CliRunner().invoke(main, ["evaluate", "--supernet", final, "--arch", "max"])
    assert wrong.exit_code == 2 and wrong.stderr.startswith("error: arch ")
    assert "is not the arch finetuned.safetensors was fine-tuned as" in wrong.stderr


@pytest.mark.slow
def test_ddp_two_gloo_ranks_keep_identical_weights(small_supernet, tmp_path):
    with socket.socket() as s:  # a free port for the rendezvous
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "vitres_deploy.cli", "finetune", "--supernet",
           str(small_supernet), "--arch", ARCH, "--out", str(tmp_path), "--epochs", "1", "--steps-per-epoch", "3",
           "--batch-size", "16", "--eval-limit", "100"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = load_finetuned(tmp_path / "finetuned.safetensors").meta
    assert meta["world_size"] == 2
    digests = meta["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
