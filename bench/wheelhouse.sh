#!/usr/bin/env bash
# Download, on a machine with PyPI access, the wheels the GPU machine lacks into .wheels/ (Python
# 3.12, x86-64 Linux). That machine has torch, numpy, pandas, pyarrow, scikit-learn and the small
# packages listed below, but no Prefect, and it cannot reach PyPI. What is copied there is these
# wheels (~36 MB) plus data/fashion-mnist (the two train files, ~26 MB). bench/gpu.sh installs from
# .wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
prefect_version=$("$PYTHON" -c 'from importlib.metadata import version; print(version("prefect"))')
rm -rf .wheels
"$PYTHON" -m pip download --quiet --dest .wheels --only-binary=:all: \
    --python-version 3.12 --implementation cp --abi cp312 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any "prefect==$prefect_version"
on_gpu_machine="numpy pandas pyarrow torch scipy annotated_doc anyio attrs certifi charset_normalizer click
cloudpickle colorama fsspec h11 httpcore httpx humanize idna jinja2 markdown markdown_it_py markupsafe mdurl
packaging pathspec pluggy prometheus_client pygments python_dateutil pyyaml regex requests rich shellingham six
typer typing_extensions urllib3"
for name in $on_gpu_machine; do rm -f ".wheels/$name"-*; done
du -sh .wheels
