"""scripts/train_shipped.sh must train every shipped model as its model card records it.

Compared: the options that change what a run learns (data, head, sizes, epochs, seed, batch, sampling).
Threads, batch-making workers and the device change only the order of float sums, and are left out.
"""

import glob
import json
import os
import re
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "train_shipped.sh")
LEARNING_OPTIONS = ("--data", "--head", "--input-size", "--epochs", "--width", "--seed", "--neg-ratio",
                    "--batch-size", "--val-fraction", "--patience", "--max-slices", "--lr", "--crop")


def options(words):
    """{option: value} of a flat word list (flags without a value map to True)."""
    out, i = {}, 0
    while i < len(words):
        w = words[i]
        if w.startswith("--"):
            if i + 1 < len(words) and not words[i + 1].startswith("--"):
                out[w] = words[i + 1]
                i += 2
                continue
            out[w] = True
        i += 1
    return out


def script_runs():
    """{run folder: learning options} as scripts/train_shipped.sh calls `run` with its defaults."""
    text = open(SCRIPT).read()
    defaults = dict(re.findall(r'^(\w+)=\$\{\1:-([^}]*)\}', text, re.M))
    common = re.search(r'^COMMON=\((.*?)\)', text, re.M | re.S).group(1)
    common_opts = options(shlex.split(re.sub(r'"\$\{WORKERS:-0\}"', "0", common)))
    runs = {}
    for name, var, rest in re.findall(r'^\s*run (\S+)\s+"\$(\w+)"\s+(.*)$', text, re.M):
        runs[name] = dict(common_opts, **options(shlex.split(rest)), **{"--data": defaults[var]})
    return runs


def shipped_cards():
    paths = sorted(glob.glob(os.path.join(ROOT, "Resources", "Models", "*", "lowresseg.json")))
    assert paths, "no shipped models found"
    return [json.load(open(p)) for p in paths]


@pytest.mark.parametrize("card", shipped_cards(), ids=lambda c: c["name"])
def test_train_shipped_reproduces_the_card(card):
    recorded = options(shlex.split(card["training"]["command"])[2:])
    runs = script_runs()
    folder = os.path.basename(recorded["--out"].rstrip("/"))
    assert folder in runs, "%s: scripts/train_shipped.sh has no `run %s`" % (card["name"], folder)
    scripted = runs[folder]
    for opt in LEARNING_OPTIONS:
        assert scripted.get(opt) == recorded.get(opt), "%s: %s is %r in the script, %r on the card" % (
            card["name"], opt, scripted.get(opt), recorded.get(opt))


def test_the_parser_sees_every_run():
    """Guards the test above against a parser that silently finds nothing."""
    runs = script_runs()
    assert len(runs) == len(shipped_cards())
    assert all(r["--data"].startswith("phantom:") for r in runs.values())
