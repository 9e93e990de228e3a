# Writes sidecar_tokenizer.json: the real Gemma 3 tokenizer cut down to what
# the seed sidecars' prompts need (their tokens and every vocabulary piece
# inside them, the merges among those, byte tokens, ASCII, special tokens),
# at the real ids. Every merge the real tokenizer applies to those prompts is
# kept, so it gives them the same ids, and it loads in milliseconds instead
# of a second. Run from the repository root: python3 tests/fuzz/sidecar_tokenizer.py
import glob, json, re, subprocess, yaml
tok = json.load(open('weights/tokenizer.json'))
vocab, merges = tok['model']['vocab'], tok['model']['merges']
texts = []
for f in sorted(glob.glob('tests/fuzz/sidecar/*')):
    y, t = yaml.safe_load(open(f)), None
    pt, ch = y.get('prompt_templates', {}), (y.get('tokens') or {}).get('injection_char') or '\u321c'
    if pt.get('av') or pt.get('actor'):
        t = (pt.get('av') or pt.get('actor')).replace('{injection_char}', ch).strip()
        texts += ['<bos><start_of_turn>user\n' + t + '<end_of_turn>\n<start_of_turn>model\n', ch]
    if pt.get('ar') or pt.get('critic'):
        texts.append('<bos>' + (pt.get('ar') or pt.get('critic')).replace('{explanation}', 'a fox'))
out = subprocess.run(['./nla', 'tokenize', 'weights/tokenizer.json', '--jsonl'], input='\n'.join(json.dumps(t) for t in texts),
                     capture_output=True, text=True, check=True).stdout
ids = {i for line in out.split() for i in json.loads(line)}
inv = {i: p for p, i in vocab.items()}
keep = {p for p in vocab if re.fullmatch(r'<0x[0-9A-F]{2}>|[\x20-\x7e]|\u2581', p)}
for i in ids:
    p = inv.get(i)
    if p: keep |= {p[a:b] for a in range(len(p)) for b in range(a + 1, len(p) + 1) if p[a:b] in vocab}
added = [{'id': a['id'], 'content': a['content'], 'special': a['special']} for a in tok['added_tokens'] if not re.fullmatch(r'<unused\d+>', a['content'])]
tok['added_tokens'] = added
tok['model']['vocab'] = {p: vocab[p] for p in sorted(keep | {a['content'] for a in added if a['content'] in vocab}, key=vocab.get)}
pairs = [m if isinstance(m, list) else m.split(' ', 1) for m in merges]
tok['model']['merges'] = [m for m in pairs if m[0] in keep and m[1] in keep and m[0] + m[1] in keep]
json.dump(tok, open('tests/fuzz/sidecar_tokenizer.json', 'w'), ensure_ascii=False, separators=(',', ':'))
