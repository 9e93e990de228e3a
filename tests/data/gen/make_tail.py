"""Writes tests/data/forward/gqa-bf16-tail/model: blocks 3..6 of the gqa-bf16
golden model as a 4-layer checkpoint (layer i here = layer i+3 there).

test_forward uses it to check the residual hook: overwriting the block-2
residual of gqa-bf16 must give exactly what this model computes when it is
started from the overwritten rows. Run from the repository root:
    python3 tests/data/gen/make_tail.py
Standard library only; the tensor bytes are copied, not recomputed."""
import json, os, struct

SRC = "tests/data/forward/gqa-bf16/model"
DST = "tests/data/forward/gqa-bf16-tail/model"
FIRST = 3

raw = open(os.path.join(SRC, "model.safetensors"), "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
header = json.loads(raw[8:8 + n])
data = raw[8 + n:]

out_tensors, blobs, off = {}, [], 0
for name, info in header.items():
    if name == "__metadata__":
        continue
    new = name
    if name.startswith("model.layers."):
        layer = int(name.split(".")[2])
        if layer < FIRST:
            continue
        new = name.replace("model.layers.%d." % layer, "model.layers.%d." % (layer - FIRST), 1)
    b, e = info["data_offsets"]
    blob = data[b:e]
    out_tensors[new] = {"dtype": info["dtype"], "shape": info["shape"], "data_offsets": [off, off + len(blob)]}
    blobs.append(blob)
    off += len(blob)
out_tensors["__metadata__"] = {"format": "pt"}
hdr = json.dumps(out_tensors).encode()
hdr += b" " * ((8 - len(hdr) % 8) % 8)

cfg = json.load(open(os.path.join(SRC, "config.json")))
cfg["layer_types"] = cfg["layer_types"][FIRST:]
cfg["num_hidden_layers"] = len(cfg["layer_types"])
os.makedirs(DST, exist_ok=True)
with open(os.path.join(DST, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(hdr)) + hdr + b"".join(blobs))
json.dump(cfg, open(os.path.join(DST, "config.json"), "w"), indent=2)
