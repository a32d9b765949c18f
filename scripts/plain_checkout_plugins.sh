# Sourced by the GPU job scripts: makes the built-in plugins of a plain checkout discoverable (PY, OUT set).
# The built-in plugins are found through the 'ldmkit' entry points of the installed distribution. Without an
# installed ldmkit: install this checkout in editable mode, or (no pip, no setuptools) describe the entry points
# in a metadata folder on the path, which is all that plugin discovery reads.
has_plugins() { "$PY" -c "from importlib import metadata as m; import sys; sys.exit(not any(e.name == 'shapes' for e in m.entry_points(group='ldmkit')))"; }
if ! has_plugins; then
  "$PY" -m pip install --no-deps --no-build-isolation -q -e . >"$OUT/pip.log" 2>&1 || true
fi
if ! has_plugins; then
  META=$(mktemp -d)
  "$PY" - "$META" <<'EOF'
import sys
import tomllib
from pathlib import Path

project = tomllib.loads(Path("pyproject.toml").read_text())["project"]
info = Path(sys.argv[1]) / f"ldmkit-{project['version']}.dist-info"
info.mkdir()
(info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: ldmkit\nVersion: {project['version']}\n")
groups = project["entry-points"]
text = "".join(f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items())
(info / "entry_points.txt").write_text(text)
EOF
  export PYTHONPATH="$PYTHONPATH:$META"
fi
has_plugins || { echo "the ldmkit plugins cannot be found" >&2; exit 2; }
