#!/usr/bin/env bash
# Regenerates fuzz/seeds/ (committed) from the project's own fixtures: tests/fixtures/**.
#   admission_review/  an AdmissionReview (CREATE, and UPDATE) around every JobSet and Pod
#   annotations/       the restart.jobset.dev/* annotations of every fixture, as key=value lines
#   config/            the fixture config and a few small variants
# Needs python3 with PyYAML (only to regenerate; the fuzz runs read the committed seeds).
set -euo pipefail
cd "$(dirname "$0")"
python3 - <<'PY'
import glob, json, os, shutil, yaml

root = "seeds"
shutil.rmtree(root, ignore_errors=True)
for t in ("admission_review", "annotations", "config"):
    os.makedirs(f"{root}/{t}")

def review(uid, op, obj):
    kind = obj.get("kind", "")
    group, version = ("jobset.x-k8s.io", "v1alpha2") if kind == "JobSet" else ("", "v1")
    meta = obj.get("metadata") or {}
    req = {
        "uid": uid,
        "kind": {"group": group, "version": version, "kind": kind},
        "resource": {"group": group, "version": version, "resource": kind.lower() + "s"},
        "namespace": meta.get("namespace", "ml"),
        "operation": op,
        "userInfo": {"username": "system:serviceaccount:ml:trainer"},
        "object": obj,
        "oldObject": obj if op == "UPDATE" else None,
        "dryRun": False,
    }
    if "name" in meta:
        req["name"] = meta["name"]
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": req}

def annotation_lines(obj):
    lines = []
    maps = [((obj.get("metadata") or {}).get("annotations") or {})]
    for rj in ((obj.get("spec") or {}).get("replicatedJobs") or []):
        maps.append((((rj.get("template") or {}).get("metadata") or {}).get("annotations") or {}))
    for m in maps:
        lines += [f"{k}={v}" for k, v in m.items() if k.startswith("restart.jobset.dev/")]
    return lines

n = 0
for path in sorted(glob.glob("../tests/fixtures/**/*.yaml", recursive=True)):
    base = os.path.splitext(os.path.relpath(path, "../tests/fixtures"))[0].replace("/", "-")
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if base == "config":
        with open(path) as f:
            text = f.read()
        with open(f"{root}/config/fixture.yaml", "w") as out:
            out.write(text)
        continue
    for i, doc in enumerate(docs):
        if doc.get("kind") not in ("JobSet", "Pod"):
            continue
        for op in ("CREATE",) + (("UPDATE",) if i == 0 and base.endswith("single") else ()):
            with open(f"{root}/admission_review/{base}-{i}-{op.lower()}.json", "w") as out:
                json.dump(review(f"{base}-{i}", op, doc), out, separators=(",", ":"))
            n += 1
        lines = annotation_lines(doc)
        if lines:
            with open(f"{root}/annotations/{base}-{i}.txt", "w") as out:
                out.write("\n".join(lines))

extra_configs = {
    "targets.yaml": "targets: jobsets,pods\n",
    "defaults.yaml": "defaults:\n  inPlace: enabled\n  action: Restart\n  onExitCodes: [42, 128-143]\n",
    "containers.yaml": "defaults:\n  inPlace: enabled\n  containers: [trainer, sidecar]\n  exceptExitCodes: \"0,2\"\ntargets: [jobsets, pods]\n",
}
for name, text in extra_configs.items():
    with open(f"{root}/config/{name}", "w") as out:
        out.write(text)
with open(f"{root}/annotations/ranges.txt", "w") as out:
    out.write("restart.jobset.dev/in-place=enabled\nrestart.jobset.dev/except-exit-codes=0,2,128-143\nrestart.jobset.dev/containers=a,b-c\nrestart.jobset.dev/replicated-jobs=workers")
print(f"wrote {n} reviews and", len(os.listdir(f"{root}/annotations")), "annotation sets,",
      len(os.listdir(f"{root}/config")), "configs into fuzz/seeds/")
PY
