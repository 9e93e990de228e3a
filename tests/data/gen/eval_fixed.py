# Writes tests/data/eval/fixed_results.jsonl (a small hand-made results file in
# the published field names; explanations built from the texts that the blog
# post "Some observations about NLA explanations" and its author's notes quote)
# and prints the summary statistics test_eval.c expects, computed here
# independently of nla.c (plain Python, numpy's default percentile rule).
# Run from the repository root: python3 tests/data/gen/eval_fixed.py
import json, math, re

E = "\u2026"  # the spec's ellipsis
rows = [
    # source, role, token_str, mse_nrm, cos, explanation, raw_av_text (None: tags around the explanation), av_parsed
    ("pretraining", None, "How", 0.0972, None,
     "Literary narrative pattern: formal English countryside setting, " + E + "\n\nThe phrase \"" + E + "\" signals " + E +
     "\n\nFinal token \"" + E + "\" opens/ends " + E + ", requiring " + E + " \u2014 likely " + E, None, True),
    ("chat", "asst_content", " the", 0.0076, None,
     "Structured list format with bullet points establishes a game/narrative summary, " + E +
     "\n\nFinal token \"" + E + "\" opens/ends " + E + ", requiring " + E + " \u2014 likely " + E, None, True),
    ("pretraining", None, "\n", 0.0294, None,
     "Technical article structure: a blog post reviewing a specific research paper " + E, None, True),
    ("pretraining", None, "2024", 0.0, None, "Fragmented, incoherent academic text pattern: " + E, None, True),
    ("chat", "user_content", " a", 0.0123, None,
     "Structured dialogue: a user asks how to boil an egg.\n\nThe phrase \"soft yolk\" signals a cooking question.\n\n"
     "The final token \"?\" ends the question.", None, True),
    ("chat", "role_marker", "<start_of_turn>", 0.1392, None, "", "<explanation>\n\n\n\n\n\n", False),
    ("chat", "end_of_turn", ",", 1.2, None, "\u8fd9\u662f\u4e00\u4e2a\u5173\u4e8e\u5929\u6c14\u7684\u53e5\u5b50", None, True),
    ("pretraining", None, "ing", 0.0138, None,
     "Code documentation: a Python helper computing moving averages.\n\nFinal token \"ing\" continues the word.", None, True),
    ("pretraining", None, " Paris", None, 0.995,
     "Travel guide: sights of a European capital.\n\n\n\nThe phrase \u201cthe city of light\u201d names Paris.\n\n"
     "Final token \" Paris\" names the city.", None, True),
    ("chat", "asst_content", " lazy", 0.0087, None, "A fable about animals; the fox jumps over the dog.", None, True),
    ("chat", "bos", "<bos>", 0.0006, None, "Structured conversation start.", None, True),
    ("pretraining", None, "\u00e9t\u00e9", 0.0212, None, "French text: a weather report for summer. Final token is a noun.", None, True),
]

out = []
for i, (src, role, tok, mse, cos, ex, raw, parsed) in enumerate(rows):
    if raw is None:
        raw = "<explanation>\n" + ex + "\n</explanation>"
    r = {"sample_idx": i, "record_id": "r%d" % i, "source": src, "role": role, "token_id": 100 + i, "token_str": tok,
         "position": 10 + i, "seq_len": 40, "vec_norm": 1.0, "text_preview": "preview %d" % i, "explanation": ex,
         "raw_av_text": raw, "av_parsed": parsed}
    if mse is not None: r["mse_nrm"] = mse
    if cos is not None: r["cos"] = cos
    out.append(r)
with open("tests/data/eval/fixed_results.jsonl", "w") as f:
    for r in out:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
    f.write("not json at all\n")
    f.write(json.dumps({"sample_idx": 99, "explanation": "no scores"}) + "\n")

def mse_of(r): return r["mse_nrm"] if "mse_nrm" in r else 2 * (1 - r["cos"])
def cos_of(r): return r["cos"] if "cos" in r else 1 - r["mse_nrm"] / 2
def pct(xs, q):
    xs = sorted(xs); at = q * (len(xs) - 1); i = int(math.floor(at))
    return xs[i] + (at - i) * (xs[i + 1] - xs[i]) if i + 1 < len(xs) else xs[-1]
def stats(rs):
    m = [mse_of(r) for r in rs]; mean = sum(m) / len(m)
    return {"n": len(rs), "mse_mean": mean, "mse_median": pct(m, .5), "mse_p10": pct(m, .1), "mse_p90": pct(m, .9),
            "mse_p99": pct(m, .99), "cos_mean": sum(cos_of(r) for r in rs) / len(rs), "fve_nrm": 1 - mean / 0.0302,
            "catastrophic": sum(cos_of(r) < 0.5 for r in rs) / len(rs)}

def kind(s):
    if re.fullmatch(r"<[^ \n]+>", s): return "special"
    if s == "": return "other"
    if re.fullmatch(r"[ \t\r\n]+", s): return "whitespace"
    t = s[1:] if s.startswith(" ") else s
    lead = s.startswith(" ")
    if re.fullmatch(r"[0-9]+", t): return "digits"
    if re.fullmatch(r"[!-/:-@\[-`{-~]+", t): return "punctuation"
    if re.fullmatch(r"[A-Za-z]", t): return "single_letter"
    if re.match(r"[A-Z]", t): return "cap_word" if lead else "cap_no_space"
    if re.match(r"[a-z]", t): return "lower_word" if lead else "subword"
    return "other"

def shape(ex):
    paras = [p.strip() for p in re.split(r"\n[ \t\r]*\n", ex.strip()) if p.strip()]
    first, last = paras[0], paras[-1]
    m = re.match(r"([^.:\"\n]*):", first)
    kind_topic = bool(m) and len(m.group(1)) < 80 and len(m.group(1).split(" ")) <= 8 and first[len(m.group(0)):len(m.group(0)) + 1] == " " \
        and len(first) > len(m.group(0)) + 1
    structured = re.match(r"Structured(?![A-Za-z])", first) is not None
    final = len(paras) > 1 and re.match(r"(?i)(the )?final token", last) is not None
    body = paras[:-1] if final else paras
    quoted = any(re.search(r"\"[^\"]+\"|\u201c[^\u201d]+\u201d", p) for p in body)
    return len(paras), kind_topic, structured, quoted, final

res = {"all": stats(out)}
for key, field in (("source", "source"), ("role", "role")):
    for v in sorted({r[field] for r in out if r[field] is not None}):
        res[key + "=" + v] = stats([r for r in out if r[field] == v])
kinds = {}
for r in out: kinds.setdefault(kind(r["token_str"]), []).append(r)
for k, rs in kinds.items(): res["token_kind=" + k] = stats(rs)

ex = [r for r in out if r["explanation"]]
sh = [shape(r["explanation"]) for r in ex]
chat = [s for r, s in zip(ex, sh) if r["role"] is not None]; non = [s for r, s in zip(ex, sh) if r["role"] is None]
res["structure"] = {"explanations": len(ex), "two_or_three_paragraphs": sum(2 <= s[0] <= 3 for s in sh) / len(ex),
                    "first_kind_colon_topic": sum(s[1] for s in sh) / len(ex), "first_word_structured": sum(s[2] for s in sh) / len(ex),
                    "quoted_context": sum(s[3] for s in sh) / len(ex), "final_token_paragraph": sum(s[4] for s in sh) / len(ex),
                    "structured_chat": sum(s[2] for s in chat) / len(chat), "structured_nonchat": sum(s[2] for s in non) / len(non)}
def cjk(t):
    c = sum(1 for ch in t if 0x2e80 <= ord(ch) <= 0x9fff or 0xac00 <= ord(ch) <= 0xd7af or 0xf900 <= ord(ch) <= 0xfaff or 0xff00 <= ord(ch) <= 0xffef)
    o = sum(1 for ch in t if not ch.isspace()) - c
    return c > 0 and c >= o
res["templates"] = {
    "sink_fragmented_academic": sum("Fragmented, incoherent academic text" in r["explanation"] for r in out),
    "fallback_research_paper": sum(any(w in r["explanation"] for w in ("research paper", "Fibonacci", "Kalman")) for r in out),
    "cjk_output": sum(cjk(r["explanation"] or r["raw_av_text"]) for r in out),
    "newline_repetition": sum("\n\n\n" in r["raw_av_text"] for r in out),
    "unparsed": sum(not r["av_parsed"] for r in out)}
print(json.dumps(res, indent=1))
