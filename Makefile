# nla.c - build, test and check. Every target says why it exists.
CC      ?= cc
CFLAGS  ?= -O2 -g
WARN     = -std=c11 -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
           -Wcast-align -Wformat=2 -Wundef
OMP     ?= -fopenmp
LDLIBS   = -lm

all: nla

# The CLI: nla.c with its main(), threaded with OpenMP.
nla: nla.c nla.h
	$(CC) $(CFLAGS) $(WARN) $(OMP) -DNLA_MAIN -o $@ nla.c $(LDLIBS)

# The library object that tests and embedders link.
nla.o: nla.c nla.h
	$(CC) $(CFLAGS) $(WARN) $(OMP) -c -o $@ nla.c

TESTS = tests/test_safetensors tests/test_forward tests/test_api

tests/%: tests/%.c tests/test.h nla.o
	$(CC) $(CFLAGS) $(WARN) -Werror $(OMP) -o $@ $< nla.o $(LDLIBS) -lpthread

# Unit and golden tests; prints "N passed, N failed" per file. Seconds.
test: $(TESTS)
	@for t in $(TESTS); do echo "== $$t"; ./$$t || exit 1; done

# The same tests under AddressSanitizer + UBSan, built without OpenMP.
sanitize:
	$(MAKE) clean
	$(MAKE) test OMP= CFLAGS="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"
	$(MAKE) clean

clean:
	rm -f nla nla.o $(TESTS)

.PHONY: all test sanitize clean
