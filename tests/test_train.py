"""Supernet training: schedules, bit-for-bit resume, the CLI, and DDP with 2 gloo processes."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from vitres_deploy.arch import max_arch, min_arch, smallest_open_arch
from vitres_deploy.checkpoint import load_checkpoint
from vitres_deploy.cli import main
from vitres_deploy.distributed import join_ranks
from vitres_deploy.errors import RunDirError, SettingsError
from vitres_deploy.evaluate import topk_accuracy
from vitres_deploy.train import TrainConfig, _set_up, lr_at, opened_fraction, train, weight_digest

QUICK = {"steps_per_epoch": 3, "batch_size": 32, "eval_limit": 100}
pytestmark = pytest.mark.usefixtures("fmnist_dir", "torch_one_thread")


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig(epochs=10, lr=1e-3, min_lr=1e-5, lr_warmup_epochs=1)
    lrs = [lr_at(cfg, s, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] == pytest.approx(1e-5, rel=0.05)


def test_choices_open_progressively():
    cfg = TrainConfig(warmup_epochs=4)
    fractions = [opened_fraction(cfg, e, 0, 10) for e in range(6)]
    assert fractions == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert opened_fraction(TrainConfig(warmup_epochs=0), 0, 0, 10) == 1.0


def test_resume_continues_bit_for_bit(tmp_path):
    cfg = TrainConfig(epochs=2, archs_per_batch=2, **QUICK)
    straight = train(cfg, tmp_path / "a", progress=False)
    with pytest.raises(_Stop):  # an interruption right after epoch 1's checkpoint
        train(cfg, tmp_path / "b", progress=False, on_epoch=lambda r: _stop_after(r, 1))
    with open(tmp_path / "b" / "log.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')  # a log line torn by the interruption
    resumed = train(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = load_checkpoint(straight), load_checkpoint(resumed)
    assert weight_digest(a.supernet) == weight_digest(b.supernet)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert {"loss", "lr", "images_per_s", "holdout_top1_max", "holdout_top1_min"} <= set(log[0])
    assert b.meta["train_config"]["archs_per_batch"] == 2 and b.meta["data"]["holdout"] == {"seed": 0, "fraction": 0.1}


class _Stop(Exception):
    pass


def _stop_after(record, epoch):
    if record["epoch"] == epoch:
        raise _Stop


def test_a_run_is_not_overwritten_and_resume_needs_a_run(tmp_path):
    cfg = TrainConfig(epochs=1, **QUICK)
    train(cfg, tmp_path, progress=False)
    with pytest.raises(RunDirError, match="already holds a training run: pass resume to continue it") as error:
        train(cfg, tmp_path, progress=False)
    assert error.value.field == "resume"
    with pytest.raises(RunDirError, match="nothing to resume"):
        train(cfg, tmp_path / "empty", resume=True, progress=False)


def test_resume_refuses_changed_settings_naming_the_flag(tmp_path):
    """`train --resume` with another --lr (or any setting but --epochs) is refused, as `search --resume` is."""
    train(TrainConfig(epochs=1, **QUICK), tmp_path, progress=False)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--resume", "--epochs", "1", *flags,
                                       "--lr", "0.5"])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: cannot resume {tmp_path}: it was trained with --lr=0.002, now lr=0.5")
    with pytest.raises(RunDirError, match="it was trained with batch_size=") as error:
        train(TrainConfig(epochs=2, **{**QUICK, "batch_size": QUICK["batch_size"] * 2}), tmp_path, resume=True,
              progress=False)
    assert error.value.field == "batch_size"
    with pytest.raises(RunDirError, match="trained with space='fmnist', now space='vit-resnas-tiny@56'") as error:
        train(TrainConfig(epochs=2, space="vit-resnas-tiny@56", **QUICK), tmp_path, resume=True, progress=False)
    assert error.value.field == "space"
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--resume", "--epochs", "1", *flags,
                                       "--data-kind", "folder", "--data", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: cannot resume {tmp_path}: it was trained with --data-kind='fmnist', now "
                                    "data='folder'"), result.output


def test_train_json_prints_the_supernet_and_its_epochs(tmp_path):
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in QUICK.items()]
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "run"), "--epochs", "1", *flags, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["supernet"] == str(tmp_path / "run" / "supernet.safetensors")
    assert [e["epoch"] for e in report["epochs"]] == [1] and "loss" in report["epochs"][0]


def test_sandwich_steps_train_the_largest_and_the_smallest_open_arch_beside_random_ones():
    with join_ranks() as ranks:
        run = _set_up(TrainConfig(sandwich=True, warmup_epochs=4, **QUICK), None, None, ranks)
        plain = _set_up(TrainConfig(warmup_epochs=4, **QUICK), None, None, ranks)
    space = run.net.space
    for epoch, fraction in ((0, 0.0), (2, 0.5), (5, 1.0)):
        archs = run.step_archs(epoch, 0, 0)
        assert len(archs) == 4 and archs[:2] == [max_arch(space), smallest_open_arch(space, fraction)]
        assert archs[2:] == plain.step_archs(epoch, 0, 0)[:2]  # the rest: the same random stream
    assert archs[1] == min_arch(space)
    firsts = [plain.step_archs(5, step, 0)[0] for step in range(10)]
    assert max_arch(space) not in firsts and len(set(firsts)) == 10
    with pytest.raises(SettingsError, match="sandwich needs archs_per_batch >= 2") as error:
        TrainConfig(sandwich=True, archs_per_batch=1)
    assert error.value.field == "archs_per_batch"
    result = CliRunner().invoke(main, ["train", "--out", "unused", "--sandwich", "--archs-per-batch", "1"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: sandwich needs --archs-per-batch >= 2 (its first two groups are "
                                          "the largest and the smallest sub-network)"]


def test_distilled_steps_teach_the_others_with_the_largest_s_predictions_on_the_whole_batch():
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    with join_ranks() as ranks:
        run = _set_up(TrainConfig(sandwich=True, distill=True, drop_path=0.0, **QUICK), None, None, ranks)
        plain = _set_up(TrainConfig(sandwich=True, drop_path=0.0, **QUICK), None, None, ranks)
    plain.net.load_state_dict(run.net.state_dict())
    run.net.eval(), plain.net.eval()  # BatchNorm's running statistics: a group's output not tied to the others'
    loss = run.loss(x, y, 5, 0, 0)
    largest, *students = run.step_archs(5, 0, 0)
    assert largest == max_arch(run.net.space) and len(students) == 3
    # by hand: the largest on all 32 images, each student on a third of them (11, 11, 10)
    teacher = run.net(x, archs=[largest])
    parts = [run.net(part, archs=[arch]) for arch, part in zip(students, x.tensor_split(3))]
    soft = -(teacher.detach().softmax(-1) * torch.cat(parts).log_softmax(-1)).sum(-1).mean()
    expected = nn.functional.cross_entropy(teacher, y, label_smoothing=0.1) + soft
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert abs(plain.loss(x, y, 5, 0, 0).item() - loss.item()) > 1e-3  # not the labels' loss of the 4 groups
    loss.backward()
    widths = {str(run.net.space.stem_width(arch.stages[0].embed_dim)) for arch in (largest, *students)}
    trained = [p for name, p in run.net.stem.named_parameters()
               if not name.startswith("norms.") or name.split(".")[1] in widths]  # the BatchNorms of the widths run
    assert len(widths) > 1 and all(p.grad is not None for p in trained)
    with pytest.raises(SettingsError, match="distill needs sandwich") as error:
        TrainConfig(distill=True)
    assert error.value.field == "distill"


def test_a_batch_larger_than_the_data_names_the_setting(tmp_path):
    with pytest.raises(SettingsError, match=r"batch_size 60000 x 1 ranks exceeds the 54000 training images") as error:
        train(TrainConfig(epochs=1, batch_size=60_000), tmp_path, progress=False)
    assert error.value.field == "batch_size"
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--batch-size", "60000"])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == ["error: --batch-size 60000 x 1 ranks exceeds the 54000 training images"]


def test_cli_errors_about_the_data_name_the_data_flag(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--supernet", "fmnist-demo", "--arch", "min",
                                       "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [f"error: Fashion-MNIST directory {tmp_path / 'nowhere'} not found: install "
                                          "Debian's package dataset-fashion-mnist (apt-get install "
                                          "dataset-fashion-mnist) or set --data to a directory with its four IDX "
                                          "files"]


class _FixedLogits(nn.Module):
    """A classifier whose logits are the batch itself."""

    def forward(self, x):
        return x


def test_topk_accuracy_counts_top1_and_top5_hits():
    logits = torch.tensor([[9.0, 8, 7, 6, 5, 4], [0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]])
    labels = torch.tensor([0, 0, 5])  # a top-1 hit, a miss, a hit only beyond the top 5
    acc = topk_accuracy(_FixedLogits(), [(logits[:2], labels[:2]), (logits[2:], labels[2:])])
    assert (acc.top1, acc.top5, acc.images) == (pytest.approx(1 / 3), pytest.approx(1 / 3), 3)
    acc = topk_accuracy(_FixedLogits(), [(logits, torch.tensor([4, 1, 0]))])  # hits at ranks 5, 5 and 1
    assert (acc.top1, acc.top5) == (pytest.approx(1 / 3), pytest.approx(1.0))


def test_cli_train_then_evaluate_json(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["train", "--out", str(tmp_path), "--epochs", "1", "--steps-per-epoch", "2",
                                  "--batch-size", "32", "--archs-per-batch", "1", "--eval-limit", "100"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(main, ["evaluate", "--supernet", str(tmp_path / "supernet.safetensors"), "--arch", "min",
                                  "--split", "holdout", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["images"] == 6000 and 0.0 <= out["top1"] <= out["top5"] <= 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("flags", [["--archs-per-batch", "2"], ["--archs-per-batch", "3", "--sandwich", "--distill"]],
                         ids=["multi-arch", "sandwich-distill"])
def test_ddp_two_gloo_ranks_keep_identical_weights(tmp_path, flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "vitres_deploy.cli", "train", "--out", str(tmp_path),
           "--epochs", "1", "--steps-per-epoch", "3", "--batch-size", "16", *flags, "--eval-limit", "100"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    meta = load_checkpoint(tmp_path / "supernet.safetensors").meta
    assert meta["world_size"] == 2 and meta["train_config"]["distill"] == ("--distill" in flags)
    digests = meta["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]


def test_a_diverged_run_stops_in_one_line_and_keeps_the_last_good_checkpoint(tmp_path):
    """A loss that is not finite is no checkpoint: one line naming the epoch and the setting, nothing written."""
    from vitres_deploy.errors import TrainingDiverged

    with pytest.raises(TrainingDiverged, match=r"^training diverged in epoch 1: the loss is nan") as error:
        train(TrainConfig(epochs=1, **{**QUICK, "lr": 1e30, "lr_warmup_epochs": 0}), tmp_path, progress=False)
    assert error.value.field == "lr" and not (tmp_path / "last.safetensors").exists()
    assert not (tmp_path / "log.jsonl").is_file() or not (tmp_path / "log.jsonl").read_text().strip()
