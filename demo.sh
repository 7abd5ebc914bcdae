#!/bin/sh
# DiffTalk end to end on this machine's CPU: sets up .venv, then runs scripts/demo.py, which
# preprocesses the clips, trains the first stage and the talking LDM, renders the held-out clip
# from its own audio and scores it against the truth (about 25 minutes on 2 cores).
#
# Usage: sh demo.sh [VIDEO_OR_FOLDER ...] [--test CLIP ...] [--out DIR] [--quick] [--no-time-limit]
#                   [--init DIR] [--many]
#   sh demo.sh                          # the built-in sample (no download)
#   sh demo.sh a.mp4 b.mp4 c.mp4        # one speaker's clips: the last is held out
#   sh demo.sh clips/ --test c.mp4      # a folder of clips, c.mp4 held out
#   sh demo.sh talk.mp4                 # one clip: its last 20% is held out
#   sh demo.sh --many corpus/ --test x.mp4 y.mp4   # one model for many people (about 3 hours)
#
# Options (passed to scripts/demo.py):
#   --test CLIP        the clip to hold out (default: the last one given)
#   --out DIR          where everything goes (default: outputs/demo)
#   --quick            a shortened run (the test suite's version)
#   --init DIR         start a real-clip run from a many-speaker model (e.g. models/many_speaker)
#                      instead of from nothing; at this scale it is worse (docs/many-speaker.md)
#   --many             the clips are of many people: train one model for all, render the --test
#                      clips zero-shot, export it to {out}/many_speaker/
#   --no-time-limit    train the full step budget however long it takes (default: on real clips
#                      the first stage stops after 10 minutes and the talking LDM after 9)
# Environment: TORCH_SPEC, PYTHON: the torch build and interpreter that make .venv
# (scripts/setup_env.sh; shared with run.sh and inference.sh). A rerun of the same command
# continues where it stopped.
for arg in "$@"; do  # the comment above is the usage
    case $arg in -h | --help) sed -n '2,/^[^#]/s/^# \{0,1\}//p' "$0"; exit 0 ;; --) break ;; esac
done
set -eu
cd "$(dirname "$0")"
. scripts/setup_env.sh
exec .venv/bin/python scripts/demo.py "$@"
