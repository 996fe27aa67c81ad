"""scripts/train_shipped.sh must train every shipped model as its model card records it.

Compared: every `lowresseg train` option that changes what a run learns (data, head, sizes, epochs, seed, batch,
sampling, ...), parsed by the CLI's own parser. Threads, batch-making workers and the device change only the
order of float sums, and are left out.
"""

import glob
import json
import os
import re
import shlex

import pytest

from LowResSegLib.frontends.cli import build_parser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_shipped.sh")
# what does not change the learned weights beyond the order of float sums, or only says where a run lives;
# --stop-after ends a run where a session's GPU time ended the shipped one (the card says so under "reproduce")
NOT_LEARNING = ("threads", "workers", "device", "cache_dir", "out", "resume", "stop_after", "func")


def train_options(words):
    """All `lowresseg train` options of a command line, defaults filled in by the CLI's own parser."""
    return vars(build_parser().parse_args(["train"] + list(words)))


def learning(options):
    """The options that decide what a run learns."""
    return {k: v for k, v in options.items() if k not in NOT_LEARNING}


def script_runs():
    """{run folder: train options} as scripts/train_shipped.sh calls `run` with its defaults."""
    text = open(SCRIPT).read()
    defaults = dict(re.findall(r'^(\w+)=\$\{\1:-([^}]*)\}', text, re.M))
    common = re.search(r'^COMMON=\((.*?)\)', text, re.M | re.S).group(1)
    common = shlex.split(common.replace('"${WORKERS:-0}"', "0"))
    arrays = {k: shlex.split(v) for k, v in re.findall(r'^(\w+)=\((.*?)\)', text, re.M | re.S)}
    runs = {}
    for name, var, rest in re.findall(r'^\s*run (\S+)\s+"\$(\w+)"\s+(.*)$', text, re.M):
        words = []
        for w in shlex.split(rest):  # "${REAL_OPTIONS[@]}" expands to that array's words
            m = re.match(r'^\$\{(\w+)\[@\]\}$', w)
            words += arrays[m.group(1)] if m else [w]
        runs[name] = train_options(["--data", defaults[var]] + common + words + ["--out", name])
    return runs


def shipped_cards():
    """The cards of the shipped trained models (an ensemble is trained by nothing: it names its members)."""
    from LowResSegLib.repository.modelstore import is_ensemble

    paths = sorted(glob.glob(os.path.join(ROOT, "Resources", "Models", "*", "lowresseg.json")))
    assert paths, "no shipped models found"
    return [c for c in (json.load(open(p)) for p in paths) if not is_ensemble(c)]


@pytest.mark.parametrize("card", shipped_cards(), ids=lambda c: c["name"])
def test_train_shipped_reproduces_the_card(card):
    words = shlex.split(card["training"]["command"])
    assert words[:2] == ["lowresseg", "train"]
    recorded = train_options(words[2:])
    folder = os.path.basename(recorded["out"].rstrip("/"))
    runs = script_runs()
    assert folder in runs, "%s: scripts/train_shipped.sh has no `run %s`" % (card["name"], folder)
    assert learning(runs[folder]) == learning(recorded)
    # --stop-after ends a run where the card says its schedule was cut short, and nowhere else
    stopped_early = card["training"].get("stopped", "epochs done") != "epochs done"
    expected_stop = card["training"]["epochs_run"] if stopped_early else 0
    assert runs[folder]["stop_after"] == expected_stop


def test_run_trains_with_its_own_data_and_the_common_options():
    """What the test above assumes of the script's run(): its data argument and COMMON reach `lowresseg train`,
    and both queues are started."""
    text = open(SCRIPT).read()
    body = re.search(r'^run\(\) \{(.*?)^\}', text, re.M | re.S).group(1)
    assert "local name=$1 data=$2; shift 2" in body
    assert 'lowresseg train --data "$data" "${COMMON[@]}" "$@" --out "$RUNS/$name"' in body
    assert "--checkpoint final" in body  # the real-patient models ship the weights they were measured with
    assert re.search(r"^queue_a >", text, re.M) and re.search(r"^queue_b >", text, re.M)


def test_the_parser_sees_every_run():
    """Guards the test above against a parser that silently finds nothing."""
    runs = script_runs()
    assert len(runs) == len(shipped_cards())
    # every run's data is one of the script's two recipes: phantom-led, or real patients first (issue 28)
    assert all(r["data"].startswith("phantom:") or r["data"].startswith("lgg:train") for r in runs.values())
    assert any(r["data"].startswith("lgg:train") and r["ema"] == 0.998 for r in runs.values())
