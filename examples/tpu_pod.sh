#!/bin/bash
# The JAX run on a Cloud TPU pod slice (several hosts, e.g. v5p-32 or v4-32): every host runs one
# jax_run.py process over its own chips, and JAX joins them itself (a Cloud TPU VM; no process
# flags). From the root of a checkout on your own machine:
#
#   examples/tpu_pod.sh NAME ZONE setup     # this checkout on every host, installed with jax[tpu]
#   examples/tpu_pod.sh NAME ZONE run --preset imagenet64-s --runs /mnt/shared/runs
#   examples/tpu_pod.sh NAME ZONE run --resume /mnt/shared/runs/imagenet64-s-20261202-101500
#   examples/tpu_pod.sh NAME ZONE log       # the end of the run's output on host 0
#
# The run folder must be on a file system every host sees, mounted at the same path on each
# (an NFS share such as Filestore): process 0 writes it, and every process reads it to resume.
set -euo pipefail
if [ $# -lt 3 ]; then
    echo "usage: $0 NAME ZONE setup | run ARGUMENTS… | log" >&2
    exit 2
fi
name=$1 zone=$2 action=$3
shift 3
on_every_host() { gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "$1"; }

case $action in
setup)
    archive=$(mktemp --suffix .tar.gz)
    git archive --format=tar.gz -o "$archive" HEAD
    gcloud compute tpus tpu-vm scp "$archive" "$name":trigcore.tar.gz --zone "$zone" --worker=all
    on_every_host "mkdir -p trigcore && tar -xzf trigcore.tar.gz -C trigcore && cd trigcore \
        && python3 -m venv .venv && .venv/bin/pip install -q -e '.[jax,train]' 'jax[tpu]'"
    ;;
run)
    # detached from the ssh session: a dropped connection does not stop the run
    on_every_host "cd trigcore && nohup .venv/bin/python training/jax_run.py $(printf '%q ' "$@") \
        > ../trigcore.log 2>&1 < /dev/null &"
    ;;
log)
    gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=0 --command "tail -n 40 trigcore.log"
    ;;
*)
    echo "$0: the action is setup, run or log; got $action" >&2
    exit 2
    ;;
esac
