/* test_eval.c - nla eval on the embedded tiny trio and the sample data of
   tests/data/eval/: bad records are reported with their line, a run killed
   with SIGKILL at several points (and a results file torn mid-line) resumes
   to exactly the files of an uninterrupted run, shards 1/3 + 2/3 + 3/3
   merge into them byte for byte, other arguments on a folder are refused;
   the summary of a fixed results file matches the numbers of
   tests/data/gen/eval_fixed.py; the HTML report renders in headless
   Chromium where it is installed. Runs ./nla (make builds it first). */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <signal.h>
#include <sys/wait.h>
#include <time.h>
#include "../nla.h"
#include "test.h"
#include "util.h"

#define TRIO "weights/tiny/target", "weights/tiny/av", "weights/tiny/ar"
#define SAMPLE "--docs", "tests/data/eval/docs.jsonl", "--chats", "tests/data/eval/chats.jsonl"
#define OPTS                                                                                       \
    "--min-position", "10", "--positions-per-record", "2", "--max-new", "8", "--chunk", "4",       \
        "--threads", "1", "--quiet"

/* Starts ./nla with args (NULL-terminated), stderr to err_path. */
static pid_t spawn(const char *const *args, const char *err_path) {
    fflush(stdout); /* or the child's freopen writes this process's buffered output again */
    pid_t pid = fork();
    if (pid == 0) {
        if (!freopen(err_path, "wb", stderr) || !freopen("/dev/null", "wb", stdout)) _exit(127);
        execv("./nla", (char *const *)(uintptr_t)args);
        _exit(127);
    }
    return pid;
}

static int wait_rc(pid_t pid) {
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static int run_nla(const char *const *args, const char *err_path) {
    return wait_rc(spawn(args, err_path));
}

/* The stderr of the last run (tests/tmp/eval_err.txt) holds want; what names the case. */
#define CHECK_ERR(want, what)                                                                      \
    do {                                                                                           \
        char *et_ = slurp("tests/tmp/eval_err.txt", NULL);                                         \
        CHECK_MSG(et_ && strstr(et_, want), "%s: %s", what, et_ ? et_ : "");                      \
        free(et_);                                                                                 \
    } while (0)

#ifdef NLA_NO_EVAL
/* Built with -DNLA_NO_EVAL: nla.h declares no eval API (NLA_EVAL_FROM_BOS is
   its first definition) and ./nla has no eval command. */
int main(void) {
    const char *args[] = {"./nla", "eval", "--summary", "tests/data/eval/fixed_results.jsonl",
                          NULL};
    mkdir("tests/tmp", 0755);
#ifdef NLA_EVAL_FROM_BOS
    CHECK_MSG(0, "nla.h declares the eval API under NLA_NO_EVAL");
#endif
    CHECK_EQ(run_nla(args, "tests/tmp/noeval.err"), 1);
    char *err = slurp("tests/tmp/noeval.err", NULL);
    CHECK_MSG(err && strstr(err, "unknown command 'eval'"), "stderr: %s", err ? err : "(none)");
    free(err);
    printf("built with NLA_NO_EVAL: the eval tests are not built; checked that eval is absent\n");
    return test_report();
}
#else
static const char *const files[] = {"params.json", "tokens.jsonl", "results.jsonl",
                                    "activations.npy", "reconstructions.npy"};

static int count_lines(const char *path) {
    size_t n;
    char *b = slurp(path, &n);
    int k = 0;
    for (size_t i = 0; b && i < n; i++) k += b[i] == '\n';
    free(b);
    return k;
}

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void spit_str(const char *path, const char *s) { spit(path, s, strlen(s)); }

/* A fresh copy of results folder a as b. */
static void copy_results(const char *a, const char *b) {
    mkdir(b, 0755);
    for (int i = 0; i < 5; i++) {
        char pa[256], pb[256];
        snprintf(pa, sizeof pa, "%s/%s", a, files[i]);
        snprintf(pb, sizeof pb, "%s/%s", b, files[i]);
        copy_file(pa, pb);
    }
}

/* Zeros row `row` of a float32 [S, 16] .npy (a header of 128 bytes). */
static void zero_row(const char *path, long row) {
    static const float z[16];
    FILE *f = fopen(path, "r+b");
    if (f && !fseek(f, 128 + row * 16 * 4, SEEK_SET)) fwrite(z, 4, 16, f);
    if (f) fclose(f);
}

static void rm_dir(const char *dir) {
    char p[256];
    for (int i = 0; i < 5; i++) { snprintf(p, sizeof p, "%s/%s", dir, files[i]); unlink(p); }
    snprintf(p, sizeof p, "%s/eval.lock", dir);
    unlink(p);
    rmdir(dir);
}

/* The number after "field": on the line of group g ("source=chat", "all"). */
static double group_num(const char *json, const char *g, const char *field) {
    char pat[128], key[64];
    const char *eq = strchr(g, '=');
    if (eq)
        snprintf(pat, sizeof pat, "\"group\": \"%.*s\", \"name\": \"%s\"", (int)(eq - g), g,
                 eq + 1);
    else snprintf(pat, sizeof pat, "\"group\": \"\", \"name\": \"%s\"", g);
    const char *l = strstr(json, pat), *f;
    snprintf(key, sizeof key, "\"%s\": ", field);
    if (!l || !(f = strstr(l, key)) || memchr(l, '\n', (size_t)(f - l))) return NAN;
    return strtod(f + strlen(key), NULL);
}

static double after(const char *json, const char *key) {
    const char *f = strstr(json, key);
    return f ? strtod(f + strlen(key), NULL) : NAN;
}

/* What nla_eval_run's progress callback saw, checked as it comes. */
typedef struct {
    int chunks, rows, texts, in_extract, cancel_at, bad;
    long tokens, chunk_tokens;
    char why[160];
} prog_log;

static int log_progress(void *user, const nla_eval_progress *p) {
    prog_log *g = (prog_log *)user;
    const char *why = NULL;
    if (!strcmp(p->phase, "extract")) {
        if (!g->in_extract) { g->chunks++; g->chunk_tokens = 0; } /* a chunk's first */
        if (p->chunk_rows != p->total) why = "extract: chunk_rows is not the vectors' count";
    } else if (!strcmp(p->phase, "verbalize")) {
        g->tokens++;
        if (p->tokens != ++g->chunk_tokens) why = "verbalize: not one callback per token";
        if (p->tokens_max != (long)p->total * 8 || p->tokens > p->tokens_max)
            why = "verbalize: tokens_max is not texts x max_new";
        if (p->done == p->total && p->total == p->chunk_rows) g->texts += p->total;
        if (g->cancel_at && g->tokens == g->cancel_at) return 1;
    } else if (!strcmp(p->phase, "reconstruct")) {
        g->rows++;
        if (p->tokens || p->chunk_rows != p->total) why = "reconstruct: tokens or chunk_rows";
    }
    g->in_extract = !strcmp(p->phase, "extract");
    if (why && !g->bad) { g->bad = 1; snprintf(g->why, sizeof g->why, "%s", why); }
    return 0;
}

static char warned[1024];
static void keep_warning(void *user, const char *msg) {
    snprintf((char *)user, sizeof warned, "%s", msg);
}

int main(void) {
    const char *ref = "tests/tmp/eval_ref", *kd = "tests/tmp/eval_kill",
               *td = "tests/tmp/eval_torn", *md = "tests/tmp/eval_merged";
    char err[512], *stderr_text;
    mkdir("tests/tmp", 0755);
    rm_dir(ref); rm_dir(kd); rm_dir(td); rm_dir(md);

    /* the plan, through the API: 7 good records, 5 bad, 2 positions each */
    {
        nla_tokenizer *tok = NULL;
        nla_eval_params p;
        nla_eval_counts c;
        memset(&p, 0, sizeof p);
        p.docs = "tests/data/eval/docs.jsonl";
        p.chats = "tests/data/eval/chats.jsonl";
        p.min_position = 10;
        p.positions_per_record = 2;
        p.shard_index = 2;
        p.shard_count = 3;
        CHECK_EQ(nla_tokenizer_open("weights/tokenizer.json", &tok, err, sizeof err), NLA_OK);
        CHECK_EQ(nla_eval_plan(&p, tok, &c, err, sizeof err), NLA_OK);
        CHECK_EQ(c.records, 7);
        CHECK_EQ(c.bad_records, 5);
        CHECK_EQ(c.samples, 14);
        CHECK_EQ(c.shard_samples, 4); /* records 1 and 4 */
        p.max_tokens = 12; /* too short for position >= 10 when cut: all but two tokens */
        p.positions_per_record = 5;
        CHECK_EQ(nla_eval_plan(&p, tok, &c, err, sizeof err), NLA_OK);
        CHECK_EQ(c.samples, 14); /* 2 positions (10, 11) in each of 7 */
        p.docs = "tests/data/eval/missing.jsonl";
        CHECK_EQ(nla_eval_plan(&p, tok, &c, err, sizeof err), NLA_ERR_IO);
        CHECK(strstr(err, "missing.jsonl") != NULL);
        /* a repeated id is a bad record, named with where it was first */
        const char dup[] = "{\"id\": \"a\", \"text\": \"one two three four five six seven eight "
                           "nine ten eleven twelve\"}\n"
                           "{\"id\": 7, \"text\": \"one two three four five six seven eight nine "
                           "ten eleven twelve\"}\n"
                           "{\"id\": \"a\", \"text\": \"one two three four five six seven eight "
                           "nine ten eleven twelve\"}\n";
        CHECK_EQ(spit("tests/tmp/eval_dup.jsonl", dup, sizeof dup - 1), 0);
        p.docs = "tests/tmp/eval_dup.jsonl";
        p.chats = NULL;
        p.warn = keep_warning;
        p.user = warned;
        warned[0] = 0;
        CHECK_EQ(nla_eval_plan(&p, tok, &c, err, sizeof err), NLA_OK);
        CHECK_EQ(c.records, 2);
        CHECK_EQ(c.bad_records, 1);
        CHECK_MSG(strstr(warned, "eval_dup.jsonl:3: skipped: id \"a\" is already the id of "
                                 "tests/tmp/eval_dup.jsonl:1"),
                  "warning: %s", warned);
        /* an id no JSON reader can hold (it would come back as inf) is a bad record */
        const char huge[] = "{\"id\": 7, \"text\": \"one two three four five six seven eight nine "
                            "ten eleven twelve\"}\n"
                            "{\"id\": -1e400, \"text\": \"one two three four five six seven eight "
                            "nine ten eleven twelve\"}\n";
        CHECK_EQ(spit("tests/tmp/eval_dup.jsonl", huge, sizeof huge - 1), 0);
        CHECK_EQ(nla_eval_plan(&p, tok, &c, err, sizeof err), NLA_OK);
        CHECK(c.records == 1 && c.bad_records == 1);
        CHECK_MSG(strstr(warned, "eval_dup.jsonl:2: skipped: \"id\" -1e400 is not a finite number"),
                  "warning: %s", warned);
        nla_tokenizer_close(tok);
    }

    /* the uninterrupted run; every bad record reported with its line */
    const char *ref_args[] = {"./nla", "eval", TRIO, SAMPLE, "--out", ref, OPTS, NULL};
    mkdir(ref, 0755);
    CHECK_EQ(run_nla(ref_args, "tests/tmp/eval_err.txt"), 0);
    stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
    CHECK(stderr_text && strstr(stderr_text, "docs.jsonl:5: skipped: invalid JSON at column 1"));
    CHECK(stderr_text && strstr(stderr_text, "docs.jsonl:6: skipped: empty \"text\""));
    CHECK(stderr_text && strstr(stderr_text, "docs.jsonl:7: skipped: too short"));
    CHECK(stderr_text && strstr(stderr_text, "docs.jsonl:8: skipped: missing \"id\""));
    CHECK(stderr_text && strstr(stderr_text, "chats.jsonl:4: skipped: chat: roles must alternate"));
    free(stderr_text);
    CHECK_EQ(count_lines("tests/tmp/eval_ref/results.jsonl"), 14);
    {
        char *r = slurp("tests/tmp/eval_ref/results.jsonl", NULL);
        const char *fields[] = {"\"sample_idx\": 13,",
                                "\"record_id\": \"chat-3\"",
                                "\"source\": \"chat-code\"",
                                "\"role\": \"asst_content\"",
                                "\"role\": null",
                                "\"token_id\": ",
                                "\"token_str\": ",
                                "\"position\": ",
                                "\"seq_len\": ",
                                "\"vec_norm\": ",
                                "\"text_preview\": \"<bos><start_of_turn>user\\n",
                                "\"explanation\": ",
                                "\"raw_av_text\": ",
                                "\"av_parsed\": ",
                                "\"mse_nrm\": ",
                                "\"cos\": ",
                                "\"fve_nrm\": "};
        for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
            CHECK_MSG(r && strstr(r, fields[i]), "results.jsonl lacks %s", fields[i]);
        free(r);
        int nd;
        long long sh[4];
        float *v = npy_load("tests/tmp/eval_ref/activations.npy", &nd, sh);
        CHECK(v && nd == 2 && sh[0] == 14 && sh[1] == 16);
        free(v);
    }

    /* progress through the API: extract per vector, verbalize per AV token
       (counted, within texts x max_new), reconstruct per row; a cancel from
       the callback mid-verbalize stops the run, and the rerun resumes to the
       files of the uninterrupted one */
    {
        const char *pd = "tests/tmp/eval_prog";
        prog_log pg;
        nla_eval_params p;
        nla_eval_counts c;
        memset(&p, 0, sizeof p);
        memset(&pg, 0, sizeof pg);
        p.target = "weights/tiny/target";
        p.av = "weights/tiny/av";
        p.ar = "weights/tiny/ar";
        p.docs = "tests/data/eval/docs.jsonl";
        p.chats = "tests/data/eval/chats.jsonl";
        p.out_dir = pd;
        p.min_position = 10;
        p.positions_per_record = 2;
        p.max_new = 8;
        p.chunk = 4;
        p.n_threads = 1;
        p.progress = log_progress;
        p.user = &pg;
        rm_dir(pd);
        mkdir(pd, 0755);
        CHECK_EQ(nla_eval_run(&p, &c, err, sizeof err), NLA_OK);
        CHECK_MSG(!pg.bad && pg.chunks == 4 && pg.rows == 14 && pg.texts == 14 &&
                      pg.tokens >= 14 && pg.tokens <= 14 * 8,
                  "progress: %s; %d chunks, %d rows, %d texts, %ld tokens", pg.why, pg.chunks,
                  pg.rows, pg.texts, pg.tokens);
        CHECK(same_files(pd, ref, files, 5));
        rm_dir(pd);
        mkdir(pd, 0755);
        memset(&pg, 0, sizeof pg);
        pg.cancel_at = 40; /* 4 texts x 8 tokens a chunk: the second chunk */
        CHECK_EQ(nla_eval_run(&p, &c, err, sizeof err), NLA_ERR_CANCELLED);
        CHECK_EQ(count_lines("tests/tmp/eval_prog/results.jsonl"), 4);
        memset(&pg, 0, sizeof pg);
        CHECK_EQ(nla_eval_run(&p, &c, err, sizeof err), NLA_OK);
        CHECK(c.resumed == 4 && same_files(pd, ref, files, 5));
        rm_dir(pd);
        /* refused before any work: max_new past the AV's positions (INT_MAX, whose sum with
           the prompt overflowed an int), and a thread count OpenMP cannot take */
        mkdir(pd, 0755);
        memset(&pg, 0, sizeof pg);
        p.max_new = INT_MAX;
        CHECK_EQ(nla_eval_run(&p, &c, err, sizeof err), NLA_ERR_RANGE);
        CHECK_MSG(strstr(err, "max_new 2147483647: the AV's prompt of") &&
                      strstr(err, "exceed its 32768 positions") && pg.chunks == 0,
                  "%s; %d chunks", err, pg.chunks);
        p.max_new = 8;
        p.n_threads = -1;
        CHECK_EQ(nla_eval_run(&p, &c, err, sizeof err), NLA_ERR_ARG);
        CHECK_MSG(strstr(err, "n_threads -1"), "%s", err);
        CHECK(pg.chunks == 0 && access("tests/tmp/eval_prog/results.jsonl", F_OK) != 0);
        p.n_threads = 1;
        const int min_pos = p.min_position; /* below NLA_EVAL_FROM_BOS is no position */
        p.min_position = -5;
        CHECK_EQ(nla_eval_run(&p, &c, err, sizeof err), NLA_ERR_ARG);
        CHECK_MSG(strstr(err, "min_position -5"), "%s", err);
        CHECK(pg.chunks == 0 && access("tests/tmp/eval_prog/results.jsonl", F_OK) != 0);
        p.min_position = min_pos;
        rm_dir(pd);
    }

    /* other arguments on the same folder are refused, naming the difference */
    const char *other_args[] = {"./nla", "eval", TRIO,     SAMPLE, "--out",
                                ref,     OPTS,   "--seed", "7",    NULL};
    CHECK(run_nla(other_args, "tests/tmp/eval_err.txt") != 0);
    stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
    CHECK(stderr_text && strstr(stderr_text, "other arguments") &&
          strstr(stderr_text, "\"seed\": 7"));
    free(stderr_text);

    /* the same run named by absolute paths from another folder resumes (the
       models are known by content); a model changed under its path (its
       nla_meta.yaml) is refused, naming the fingerprints */
    {
        char cwd[512], cmd[8192];
        CHECK(getcwd(cwd, sizeof cwd) != NULL);
        snprintf(
            cmd, sizeof cmd,
            "cd / && %s/nla eval %s/weights/tiny/target %s/weights/tiny/av/ %s/weights/tiny/ar "
            "--docs %s/tests/data/eval/docs.jsonl --chats %s/tests/data/eval/chats.jsonl --out "
            "%s/%s "
            "--min-position 10 --positions-per-record 2 --max-new 8 --chunk 4 --threads 1 "
            "2> %s/tests/tmp/eval_err.txt",
            cwd, cwd, cwd, cwd, cwd, cwd, cwd, ref, cwd);
        int rc = system(cmd);
        CHECK_EQ(WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, 0);
        stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
        CHECK_MSG(stderr_text && strstr(stderr_text, "(14 resumed, 0 new"), "absolute paths: %s",
                  stderr_text ? stderr_text : "");
        free(stderr_text);
        const char *av2 = "tests/tmp/eval_av2";
        const char *names[4] = {"config.json", "model.safetensors", "nla_meta.yaml",
                                "tokenizer.json"};
        mkdir(av2, 0755);
        for (int i = 0; i < 4; i++) {
            char a[256], b[256];
            snprintf(a, sizeof a, "weights/tiny/av/%s", names[i]);
            snprintf(b, sizeof b, "%s/%s", av2, names[i]);
            unlink(b);
            if (i == 1 || i == 3) CHECK_EQ(link(a, b), 0);
            else copy_file(a, b);
        }
        FILE *f = fopen("tests/tmp/eval_av2/nla_meta.yaml", "ab");
        if (f) {
            fputs("# changed\n", f);
            fclose(f);
        }
        const char *changed[] = {
            "./nla", "eval", "weights/tiny/target", av2, "weights/tiny/ar", SAMPLE, "--out", ref,
            OPTS,    NULL};
        CHECK_EQ(run_nla(changed, "tests/tmp/eval_err.txt"), 1);
        stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
        CHECK_MSG(stderr_text &&
                      strstr(stderr_text, "made with other arguments (it has \"models_fnv1a64\"") &&
                      !strstr(stderr_text, ",,"),
                  "changed model: %s", stderr_text ? stderr_text : "");
        free(stderr_text);
    }

    /* one writer per folder: while a run holds eval.lock (stopped with
       SIGSTOP, so it holds it for sure), a second is refused naming the
       holder's PID and host; after kill -9 of the holder the lock is free */
    {
        const char *ld = "tests/tmp/eval_lock",
                   *lock_args[] = {"./nla", "eval", TRIO, SAMPLE, "--out", ld, OPTS, NULL};
        char want[640], host[256], lock_path[256];
        rm_dir(ld);
        mkdir(ld, 0755);
        snprintf(lock_path, sizeof lock_path, "%s/eval.lock", ld);
        pid_t holder = spawn(lock_args, "tests/tmp/eval_err_holder.txt");
        snprintf(want, sizeof want, "%ld ", (long)holder);
        for (int t = 0; t < 5000; t++) { /* until the holder has written its PID */
            char *l = slurp(lock_path, NULL);
            int mine = l && !strncmp(l, want, strlen(want));
            free(l);
            if (mine || waitpid(holder, NULL, WNOHANG) != 0) break;
            sleep_ms(2);
        }
        kill(holder, SIGSTOP);
        gethostname(host, sizeof host);
        CHECK_EQ(run_nla(lock_args, "tests/tmp/eval_err.txt"), 1);
        stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
        snprintf(want, sizeof want, "nla eval: %s is held by PID %ld on host %s", lock_path,
                 (long)holder, host);
        CHECK_MSG(stderr_text && strstr(stderr_text, want), "second writer: %s",
                  stderr_text ? stderr_text : "");
        free(stderr_text);
        kill(holder, SIGKILL);
        waitpid(holder, NULL, 0);
        CHECK_EQ(run_nla(lock_args, "tests/tmp/eval_err.txt"), 0);
        CHECK_EQ(count_lines("tests/tmp/eval_lock/results.jsonl"), 14);
        CHECK_MSG(same_files(ld, ref, files, 5),
                  "the run after the lock holder's kill differs from the uninterrupted one");
        rm_dir(ld);
    }

    /* a results folder's files are its own: a symbolic link or a hard link
       among those updated in place is refused before any work, and what
       it points to stays whole (the lock once cut a model's file to its
       PID line; the rows were appended to a linked file) */
    {
        const char *ld = "tests/tmp/eval_links", *kept = "tests/tmp/eval_kept.txt",
                   *link_args[] = {"./nla", "eval", TRIO, SAMPLE, "--out", ld, OPTS, NULL};
        static const char *const own[3] = {"eval.lock", "results.jsonl", "activations.npy"};
        char at[256];
        for (int i = 0; i < 6; i++) {
            rm_dir(ld);
            mkdir(ld, 0755);
            spit_str(kept, "keep me");
            snprintf(at, sizeof at, "%s/%s", ld, own[i % 3]);
            CHECK_EQ(i < 3 ? symlink("../eval_kept.txt", at) : link(kept, at), 0);
            CHECK_EQ(run_nla(link_args, "tests/tmp/eval_err.txt"), 1);
            CHECK_ERR(i < 3 ? "a symbolic link, refused" : "has 1 other name(s) (hard links)",
                      own[i % 3]);
            char *k = slurp(kept, NULL);
            CHECK_MSG(k && !strcmp(k, "keep me"), "%s: the linked file became '%s'", own[i % 3],
                      k ? k : "(gone)");
            free(k);
            unlink(at);
        }
        rm_dir(ld);
        unlink(kept);
    }

    /* SIGKILL after k committed rows, and at fixed-seed random delays; then
       a plain rerun finishes: the files equal the uninterrupted run's */
    const char *kill_args[] = {"./nla", "eval", TRIO, SAMPLE, "--out", kd, OPTS, NULL};
    mkdir(kd, 0755);
    /* Rows 1, 5 and 9 each leave a whole chunk (a model reopened, a
       verbalize) still to do, so those kills must land mid-run however
       loaded the host is; row 12 is the last of its chunk and the final
       chunk can finish while this process polls, so that one may miss. */
    const int at_rows[] = {1, 5, 9, 12};
    int landed = 0;
    for (int i = 0; i < 4; i++) {
        char res[256];
        pid_t pid = spawn(kill_args, "tests/tmp/eval_err.txt");
        snprintf(res, sizeof res, "%s/results.jsonl", kd);
        for (int t = 0;
             t < 30000 && count_lines(res) < at_rows[i] && waitpid(pid, NULL, WNOHANG) == 0; t++)
            sleep_ms(2);
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        int n = count_lines(res);
        if (i < 3)
            CHECK_MSG(n >= at_rows[i] && n < 14, "kill %d: %d rows committed, wanted %d..13", i, n,
                      at_rows[i]);
        landed += n < 14;
    }
    printf("  SIGKILL landed mid-run %d times of 4 (after rows 1, 5, 9, 12)\n", landed);
    /* each kill at a random delay keeps every row committed before it, and
       the killed run had met no refusal (a lock left behind, a folder it
       could not resume) */
    uint64_t rng = 12345;
    for (int i = 0, before = count_lines("tests/tmp/eval_kill/results.jsonl"); i < 3; i++) {
        rng = rng * 6364136223846793005ull + 1442695040888963407ull;
        pid_t pid = spawn(kill_args, "tests/tmp/eval_err.txt");
        sleep_ms(200 + (long)((rng >> 33) % 1500));
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        const int n = count_lines("tests/tmp/eval_kill/results.jsonl");
        CHECK_MSG(n >= before && n <= 14, "random kill %d: %d rows committed, %d before it", i, n,
                  before);
        stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
        CHECK_MSG(stderr_text && !strstr(stderr_text, "nla eval:"), "random kill %d: %s", i,
                  stderr_text ? stderr_text : "");
        free(stderr_text);
        before = n;
    }
    CHECK_EQ(run_nla(kill_args, "tests/tmp/eval_err.txt"), 0);
    CHECK_MSG(same_files(kd, ref, files, 5),
              "killed and resumed run differs from the uninterrupted one");

    /* a torn last line (and vectors written for rows without a line) */
    copy_results(ref, td);
    {
        size_t n;
        char path[256], *r;
        snprintf(path, sizeof path, "%s/results.jsonl", td);
        r = slurp(path, &n);
        size_t cut = n - 1;
        for (int k = 0; k < 3 && cut > 0; cut--) k += r[cut - 1] == '\n'; /* three lines back */
        cut += 40; /* ... and 40 bytes into the next: a torn line */
        spit(path, r, cut);
        free(r);
        const char *torn_args[] = {"./nla", "eval", TRIO, SAMPLE, "--out", td, OPTS, NULL};
        CHECK_EQ(run_nla(torn_args, "tests/tmp/eval_err.txt"), 0);
        CHECK_MSG(same_files(td, ref, files, 5), "a torn results.jsonl was not redone exactly");
    }

    /* committed rows whose vectors are gone (activations.npy deleted) or
       changed (a row of reconstructions.npy zeroed) are redone, with a
       warning, never taken as zeros; --summary refuses changed vectors */
    {
        const char *zd = "tests/tmp/eval_zero",
                   *zero_args[] = {"./nla", "eval", TRIO, SAMPLE, "--out", zd, OPTS, NULL};
        nla_eval_report_params rp;
        text_buf t = {NULL, 0};
        rm_dir(zd);
        copy_results(ref, zd);
        unlink("tests/tmp/eval_zero/activations.npy");
        CHECK_EQ(run_nla(zero_args, "tests/tmp/eval_err.txt"), 0);
        stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
        CHECK_MSG(stderr_text &&
                      strstr(stderr_text, "14 committed rows (the first: sample 0) are at") &&
                      strstr(stderr_text, "they are redone"),
                  "no warning of the missing vectors: %s", stderr_text ? stderr_text : "");
        free(stderr_text);
        CHECK_MSG(same_files(zd, ref, files, 5),
                  "rows with deleted vectors were not redone exactly");
        zero_row("tests/tmp/eval_zero/reconstructions.npy", 6);
        CHECK_EQ(run_nla(zero_args, "tests/tmp/eval_err.txt"), 0);
        stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
        CHECK_MSG(stderr_text && strstr(stderr_text, "1 committed rows (the first: sample 6)"),
                  "zeroed row: %s", stderr_text ? stderr_text : "");
        free(stderr_text);
        CHECK_MSG(same_files(zd, ref, files, 5),
                  "a row with changed vectors was not redone exactly");
        zero_row("tests/tmp/eval_zero/activations.npy", 3);
        memset(&rp, 0, sizeof rp);
        CHECK_EQ(nla_eval_summary(zd, &rp, collect, &t, err, sizeof err), NLA_ERR_FORMAT);
        CHECK_MSG(strstr(err, "activations.npy: the vector of sample 3 differs from its checksum"),
                  "summary: %s", err);
        free(t.p);
        rm_dir(zd);
    }

    /* a line deleted from the middle of results.jsonl: the row is redone and
       the file is back in sample_idx order */
    {
        const char *od = "tests/tmp/eval_order",
                   *order_args[] = {"./nla", "eval", TRIO, SAMPLE, "--out", od, OPTS, NULL};
        size_t n;
        rm_dir(od);
        copy_results(ref, od);
        char *r = slurp("tests/tmp/eval_order/results.jsonl", &n), *l5 = r, *l6;
        for (int k = 0; k < 4 && l5; k++) l5 = strchr(l5, '\n') + 1;
        l6 = strchr(l5, '\n') + 1;
        memmove(l5, l6, n - (size_t)(l6 - r));
        spit("tests/tmp/eval_order/results.jsonl", r, n - (size_t)(l6 - l5));
        free(r);
        CHECK_EQ(count_lines("tests/tmp/eval_order/results.jsonl"), 13);
        CHECK_EQ(run_nla(order_args, "tests/tmp/eval_err.txt"), 0);
        CHECK_MSG(same_files(od, ref, files, 5),
                  "a deleted middle row was not redone in sample_idx order");
        /* a row whose position is not the plan's (an edit by hand) is redone */
        r = slurp("tests/tmp/eval_order/results.jsonl", &n);
        char *pos = strstr(strchr(r, '\n'), "\"position\": ") + 12; /* the second row's */
        *pos = *pos == '9' ? '8' : '9';
        spit("tests/tmp/eval_order/results.jsonl", r, n);
        free(r);
        CHECK_EQ(run_nla(order_args, "tests/tmp/eval_err.txt"), 0);
        CHECK_ERR("1 committed rows (the first: sample 1)", "a row at another position");
        CHECK_MSG(same_files(od, ref, files, 5), "a row at another position was not redone");
        /* rows without params.json: nothing says what made them, so no resume */
        unlink("tests/tmp/eval_order/params.json");
        CHECK_EQ(run_nla(order_args, "tests/tmp/eval_err.txt"), 1);
        CHECK_ERR("results.jsonl holds rows but no params.json", "rows without params.json");
        CHECK(access("tests/tmp/eval_order/params.json", F_OK) != 0);
        rm_dir(od);
    }

    /* the readers (summary, html, search) refuse what the resume refuses or redoes, naming
       the file and line: a row twice, a sample_idx past the vectors, a vector of zeros with
       no checksum, a score that cannot be; they warn of planned rows that are not there */
    {
        const char *rd = "tests/tmp/eval_read";
        const char *sum_args[] = {"./nla", "eval", "--summary", rd, NULL},
                   *search_args[] = {"./nla", "search", rd, "--near", "0", NULL};
        static const struct { const char *edit, *want; } bad[] = {
            {"dup", "results.jsonl: lines 3 and 15 are both sample 2"},
            {"idx", "results.jsonl: line 3 has no sample_idx below 14 (the rows of"},
            {"zero", "activations.npy: the vector of sample 3 is all zeros"},
            {"mse", "results.jsonl: line 2: mse_nrm -0.5 is negative"},
            {"cos", "results.jsonl: line 2: cos 1.5 is outside [-1, 1]"},
            {"parts", "results.jsonl: line 2: parts has 17 entries, more than 16"}};
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            size_t n = 0;
            rm_dir(rd);
            copy_results(ref, rd);
            char *r = slurp("tests/tmp/eval_read/results.jsonl", &n);
            const size_t cap = n + 4096;
            char *l2 = strchr(r, '\n') + 1, *l3 = strchr(l2, '\n') + 1, *l4 = strchr(l3, '\n') + 1,
                 *out = (char *)malloc(cap);
            const int e = bad[i].edit[0];
            if (e == 'd') snprintf(out, cap, "%s%.*s", r, (int)(l4 - l3), l3);
            else if (e == 'i')
                snprintf(out, cap, "%.*s{\"sample_idx\": 99,%s", (int)(l3 - r), r,
                         strchr(l3, ',') + 1);
            else if (e == 'z') { /* line 4 (sample 3) without its checksums, its vector zeros */
                char *c = strstr(l4, ", \"vectors_fnv1a64\""), *c1 = strchr(c, ']') + 1;
                snprintf(out, cap, "%.*s%s", (int)(c - r), r, c1);
                zero_row("tests/tmp/eval_read/activations.npy", 3);
            } else if (e == 'p') { /* 17 parts on line 2, more than nla eval writes */
                int o = snprintf(out, cap, "%.*s, \"parts\": [", (int)(l3 - 2 - r), r);
                for (int k = 0; k < 17; k++)
                    o += snprintf(out + o, cap - (size_t)o, "%s{\"mse_nrm\": 0.5, \"cos\": 0.7, "
                                  "\"prefix_mse_nrm\": 0.5, \"prefix_cos\": 0.7}", k ? ", " : "");
                snprintf(out + o, cap - (size_t)o, "]}\n%s", l3);
            } else {
                char *f = strstr(l2, e == 'm' ? "\"mse_nrm\": " : "\"cos\": ");
                char *f1 = strpbrk(f + 8, ",}");
                snprintf(out, cap, "%.*s%s%s", (int)(f - r), r,
                         e == 'm' ? "\"mse_nrm\": -0.5" : "\"cos\": 1.5", f1);
            }
            spit_str("tests/tmp/eval_read/results.jsonl", out);
            free(out);
            free(r);
            CHECK_EQ(run_nla(sum_args, "tests/tmp/eval_err.txt"), 1);
            CHECK_ERR(bad[i].want, bad[i].edit);
            CHECK_MSG(run_nla(search_args, "tests/tmp/eval_err.txt") == 1, "search, %s",
                      bad[i].edit);
        }
        /* 3 of the 14 rows, and a params.json that is no JSON: said, not silent */
        rm_dir(rd);
        copy_results(ref, rd);
        {
            size_t n;
            char *r = slurp("tests/tmp/eval_read/results.jsonl", &n), *c = r;
            for (int k = 0; k < 3; k++) c = strchr(c, '\n') + 1;
            spit("tests/tmp/eval_read/results.jsonl", r, (size_t)(c - r));
            free(r);
        }
        CHECK_EQ(run_nla(sum_args, "tests/tmp/eval_err.txt"), 0);
        CHECK_ERR("results.jsonl: 3 of the 14 planned rows", "an unfinished run");
        spit_str("tests/tmp/eval_read/params.json", "garbage\n");
        CHECK_EQ(run_nla(sum_args, "tests/tmp/eval_err.txt"), 0);
        CHECK_ERR("params.json is not JSON", "params.json garbage");
        /* no tokens.jsonl: the report shows previews, and says so; no activations.npy:
           search says why it cannot open it */
        const char *html_args[] = {"./nla", "eval", "--html", "tests/tmp/eval_read.html", rd,
                                   NULL},
                   *near_args[] = {"./nla", "search", rd, "--near", "1", NULL};
        unlink("tests/tmp/eval_read/tokens.jsonl");
        CHECK_EQ(run_nla(html_args, "tests/tmp/eval_err.txt"), 0);
        stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
        CHECK_MSG(stderr_text && strstr(stderr_text, "tokens.jsonl: cannot open (No such file") &&
                      strstr(stderr_text, "the report shows each row's preview instead"),
                  "html without tokens.jsonl: %s", stderr_text ? stderr_text : "");
        free(stderr_text);
        unlink("tests/tmp/eval_read.html");
        unlink("tests/tmp/eval_read/activations.npy");
        CHECK_EQ(run_nla(near_args, "tests/tmp/eval_err.txt"), 1);
        CHECK_ERR("activations.npy: cannot open (No such file", "search without activations.npy");
        rm_dir(rd);
        /* inputs with no position to explain: exit 1, and no folder left behind */
        const char *none[] = {"./nla", "eval", TRIO, SAMPLE, "--out", rd, "--min-position",
                              "5000", "--quiet", NULL};
        CHECK_EQ(run_nla(none, "tests/tmp/eval_err.txt"), 1);
        CHECK_ERR("no position to explain: 0 records", "no positions");
        CHECK(access(rd, F_OK) != 0);
    }

    /* shards 1/3, 2/3, 3/3 merged == the unsharded run */
    {
        const char *sd[3] = {"tests/tmp/eval_s1", "tests/tmp/eval_s2", "tests/tmp/eval_s3"};
        const char *shard[3] = {"1/3", "2/3", "3/3"};
        for (int i = 0; i < 3; i++) {
            const char *args[] = {"./nla", "eval", TRIO,      SAMPLE,   "--out",
                                  sd[i],   OPTS,   "--shard", shard[i], NULL};
            rm_dir(sd[i]);
            CHECK_EQ(run_nla(args, "tests/tmp/eval_err.txt"), 0);
        }
        const char *two[] = {"./nla", "eval", "--merge", md, sd[0], sd[1], NULL};
        rm_dir(md);
        CHECK(run_nla(two, "tests/tmp/eval_err.txt") != 0); /* shard 3 missing */
        CHECK_MSG(access(md, F_OK) != 0, "a refused merge left its folder"); /* nor a lock */
        const char *all[] = {"./nla", "eval", "--merge", md, sd[2], sd[0], sd[1], NULL};
        zero_row("tests/tmp/eval_s2/activations.npy", 2); /* sample 2 is record 1's: shard 2's */
        CHECK_EQ(run_nla(all, "tests/tmp/eval_err.txt"), 1);
        stderr_text = slurp("tests/tmp/eval_err.txt", NULL);
        CHECK_MSG(stderr_text &&
                      strstr(stderr_text,
                             "eval_s2: the activation of sample 2 differs from its checksum"),
                  "merge: %s", stderr_text ? stderr_text : "");
        free(stderr_text);
        const char *redo[] = {"./nla", "eval", TRIO,      SAMPLE,   "--out",
                              sd[1],   OPTS,   "--shard", shard[1], NULL};
        CHECK_EQ(run_nla(redo, "tests/tmp/eval_err.txt"), 0);
        CHECK_EQ(run_nla(all, "tests/tmp/eval_err.txt"), 0);
        CHECK_MSG(same_files(md, ref, files, 5), "merged shards differ from the unsharded run");
        /* a merge stopped after it replaced the vectors (params.json cannot be
           written: a folder is where its temporary file goes) leaves no
           results.jsonl of the merge before */
        CHECK_EQ(mkdir("tests/tmp/eval_merged/params.json.tmp", 0755), 0);
        CHECK_EQ(run_nla(all, "tests/tmp/eval_err.txt"), 1);
        CHECK_MSG(access("tests/tmp/eval_merged/results.jsonl", F_OK) != 0,
                  "a stopped merge left results.jsonl beside vectors of another merge");
        CHECK_EQ(rmdir("tests/tmp/eval_merged/params.json.tmp"), 0);
        CHECK_EQ(run_nla(all, "tests/tmp/eval_err.txt"), 0);
        CHECK_MSG(same_files(md, ref, files, 5), "merged again, the shards differ from the run");
        /* a shard's files are only read: through a symbolic link too */
        CHECK_EQ(rename("tests/tmp/eval_s1/activations.npy", "tests/tmp/eval_s1_act.npy"), 0);
        CHECK_EQ(symlink("../eval_s1_act.npy", "tests/tmp/eval_s1/activations.npy"), 0);
        CHECK_EQ(run_nla(all, "tests/tmp/eval_err.txt"), 0);
        CHECK_MSG(same_files(md, ref, files, 5), "merged through a link, the shards differ");
        /* a folder of another study is not merged over, nor rows that no
           params.json explains; a merge again or over the unsharded run is */
        const char *od = "tests/tmp/eval_other";
        const char *over[] = {"./nla", "eval", "--merge", od, sd[2], sd[0], sd[1], NULL};
        rm_dir(od);
        copy_results(ref, od);
        char *pj = slurp("tests/tmp/eval_other/params.json", NULL),
             *sk = pj ? strstr(pj, "\"skip_special\": false") : NULL;
        CHECK(sk != NULL);
        if (sk) {
            memcpy(sk + 16, "true ", 5); /* "false" -> "true " */
            spit_str("tests/tmp/eval_other/params.json", pj);
        }
        free(pj);
        CHECK_EQ(run_nla(over, "tests/tmp/eval_err.txt"), 1);
        CHECK_ERR("it holds another study", "merge over another study");
        CHECK_MSG(same_files(od, ref, files + 1, 4), "a refused merge changed the folder");
        unlink("tests/tmp/eval_other/params.json");
        CHECK_EQ(run_nla(over, "tests/tmp/eval_err.txt"), 1);
        CHECK_ERR("results.jsonl holds rows but no params.json", "merge over unexplained rows");
        copy_file("tests/tmp/eval_ref/params.json", "tests/tmp/eval_other/params.json");
        CHECK_EQ(run_nla(over, "tests/tmp/eval_err.txt"), 0);
        CHECK_MSG(same_files(od, ref, files, 5), "merged over the unsharded run, it differs");
        rm_dir(od);
#ifdef __linux__
        /* a second writer inside this process is refused too (open-file locks;
           the merge's closing of its descriptor drops the held lock: checked last) */
        int held = hold_lock("tests/tmp/eval_merged/eval.lock");
        CHECK(held >= 0);
        const char *const sds[3] = {sd[0], sd[1], sd[2]};
        char why[512];
        CHECK_EQ(nla_eval_merge(md, sds, 3, why, sizeof why), NLA_ERR_BUSY);
        CHECK_MSG(strstr(why, "another nla eval is writing"), "merge: %s", why);
        if (held >= 0) close(held);
#endif
        for (int i = 0; i < 3; i++) rm_dir(sd[i]);
        unlink("tests/tmp/eval_s1_act.npy");
    }

    /* the summary of a fixed results file against tests/data/gen/eval_fixed.py */
    {
        static const struct { const char *group, *field; double want;
        } exp[] = {{"all", "n", 12},
                   {"all", "mse_mean", 0.12833333333333333},
                   {"all", "mse_median", 0.013049999999999999},
                   {"all", "mse_p10", 0.0013000000000000006},
                   {"all", "mse_p90", 0.135},
                   {"all", "mse_p99", 1.0833120000000007},
                   {"all", "cos_mean", 0.9358333333333334},
                   {"all", "fve_nrm", -3.2494481236203088},
                   {"all", "catastrophic", 0.08333333333333333},
                   {"source=chat", "n", 6},
                   {"source=chat", "mse_mean", 0.22806666666666664},
                   {"source=chat", "mse_p90", 0.6696},
                   {"source=chat", "mse_p99", 1.1469600000000002},
                   {"source=chat", "catastrophic", 0.16666666666666666},
                   {"source=pretraining", "mse_mean", 0.0286},
                   {"source=pretraining", "mse_median", 0.0175},
                   {"source=pretraining", "mse_p10", 0.0050000000000000044},
                   {"source=pretraining", "cos_mean", 0.9857},
                   {"source=pretraining", "fve_nrm", 0.052980132450331174},
                   {"role=asst_content", "n", 2},
                   {"role=asst_content", "mse_p10", 0.00771},
                   {"role=bos", "mse_mean", 0.0006},
                   {"role=end_of_turn", "catastrophic", 1.0},
                   {"role=role_marker", "mse_mean", 0.1392},
                   {"role=user_content", "cos_mean", 0.99385},
                   {"token_kind=cap_no_space", "mse_mean", 0.0972},
                   {"token_kind=lower_word", "n", 2},
                   {"token_kind=whitespace", "mse_mean", 0.0294},
                   {"token_kind=digits", "mse_mean", 0.0},
                   {"token_kind=single_letter", "mse_mean", 0.0123},
                   {"token_kind=special", "n", 2},
                   {"token_kind=special", "mse_p90", 0.12534},
                   {"token_kind=punctuation", "mse_mean", 1.2},
                   {"token_kind=subword", "mse_mean", 0.0138},
                   {"token_kind=cap_word", "cos_mean", 0.995},
                   {"token_kind=other", "mse_mean", 0.0212}};
        static const struct { const char *key; double want;
        } shape[] = {{"\"explanations\": ", 11},
                     {"\"two_or_three_paragraphs\": ", 0.45454545454545453},
                     {"\"first_kind_colon_topic\": ", 0.6363636363636364},
                     {"\"first_word_structured\": ", 0.2727272727272727},
                     {"\"quoted_context\": ", 0.2727272727272727},
                     {"\"final_token_paragraph\": ", 0.45454545454545453},
                     {"\"structured_chat\": ", 0.6},
                     {"\"structured_nonchat\": ", 0.0},
                     {"\"sink_fragmented_academic\": {\"n\": ", 1},
                     {"\"fallback_research_paper\": {\"n\": ", 1},
                     {"\"cjk_output\": {\"n\": ", 1},
                     {"\"newline_repetition\": {\"n\": ", 2},
                     {"\"unparsed\": {\"n\": ", 1}};
        nla_eval_report_params rp;
        text_buf t = {NULL, 0};
        memset(&rp, 0, sizeof rp);
        rp.json = 1;
        CHECK_EQ(nla_eval_summary("tests/data/eval/fixed_results.jsonl", &rp, collect, &t, err,
                                  sizeof err),
                 NLA_OK);
        for (size_t i = 0; t.p && i < sizeof exp / sizeof *exp; i++)
            CHECK_MSG(fabs(group_num(t.p, exp[i].group, exp[i].field) - exp[i].want) <= 1e-7,
                      "%s %s: %g, want %g", exp[i].group, exp[i].field,
                      group_num(t.p, exp[i].group, exp[i].field), exp[i].want);
        for (size_t i = 0; t.p && i < sizeof shape / sizeof *shape; i++)
            CHECK_MSG(fabs(after(t.p, shape[i].key) - shape[i].want) <= 1e-9, "%s%g, want %g",
                      shape[i].key, after(t.p, shape[i].key), shape[i].want);
        CHECK(t.p &&
              strstr(t.p, "\"fve_own_mean\": null")); /* no vectors beside a bare JSONL file */
        CHECK_MSG(json_whole(t.p), "the JSON summary is not one JSON object: %s", t.p ? t.p : "");
        free(t.p);
        /* the text tables, and a results folder (with its vectors) */
        rp.json = 0;
        t.p = NULL;
        t.n = 0;
        CHECK_EQ(nla_eval_summary(ref, &rp, collect, &t, err, sizeof err), NLA_OK);
        CHECK(t.p && strstr(t.p, "14 rows") && strstr(t.p, "role=asst_content") &&
              strstr(t.p, "structure of the"));
        free(t.p);
        CHECK_EQ(nla_eval_summary("tests/tmp/nonexistent", &rp, collect, &t, err, sizeof err),
                 NLA_ERR_IO);
    }

    /* a study of documents only: the chat share, the mean cos of templates
       and flags no row has, and fve_own (no vectors) do not apply: "-" in
       the text and the HTML report, never nan */
    {
        const char *dj = "tests/tmp/eval_docs_only.jsonl", *dh = "tests/tmp/eval_docs_only.html";
        nla_eval_report_params rp;
        text_buf t = {NULL, 0};
        char *h;
        memset(&rp, 0, sizeof rp);
        spit_str(dj,
                 "{\"sample_idx\": 0, \"source\": \"a\", \"token_str\": \"x\", \"mse_nrm\": 0.1, "
                 "\"cos\": 0.95, \"explanation\": \"Structured prose.\"}\n"
                 "{\"sample_idx\": 1, \"source\": \"a\", \"token_str\": \"y\", \"mse_nrm\": 0.2, "
                 "\"cos\": 0.9, \"explanation\": \"Plain prose.\"}\n");
        CHECK_EQ(nla_eval_summary(dj, &rp, collect, &t, err, sizeof err), NLA_OK);
        CHECK_MSG(t.p && strstr(t.p, "      - of 0 chat, 50.0% of 2 non-chat"), "summary: %s",
                  t.p ? t.p : "");
        CHECK_MSG(t.p && !strstr(t.p, "nan") && !strstr(t.p, "inf"), "summary: %s", t.p ? t.p : "");
        CHECK(t.p && strstr(t.p, "mean cos -\n"));
        free(t.p);
        CHECK_EQ(nla_eval_report_html(dj, dh, &rp, err, sizeof err), NLA_OK);
        h = slurp(dh, NULL);
        CHECK(h && strstr(h, "- of 0 chat") && !strstr(h, "nan") && !strstr(h, "inf"));
        free(h);
        unlink(dj);
        unlink(dh);
    }

    /* a score beyond a double's range (or one whose mse_nrm = 2 (1 - cos)
       is), or a part without one of its scores, is no data: refused,
       naming the file, line and field */
    {
        static const struct { const char *row, *want;
        } bad[] = {
            {"\"mse_nrm\": 1e999, \"cos\": 0.5", "line 2: mse_nrm is not a finite number"},
            {"\"mse_nrm\": 0.5, \"cos\": -1e999", "line 2: cos is not a finite number"},
            {"\"cos\": -1e308", "line 2: cos -1e+308 gives mse_nrm = 2 (1 - cos) beyond"},
            {"\"mse_nrm\": 0.5, \"vec_norm\": 1e999", "line 2: vec_norm is not a finite number"},
            {"\"mse_nrm\": 0.5, \"greedy\": {\"mse_nrm\": 1e999, \"cos\": 0.5}",
             "line 2: greedy.mse_nrm is not"},
            {"\"mse_nrm\": 0.5, \"parts\": [{\"mse_nrm\": 0.5, \"cos\": 0.5, \"prefix_mse_nrm\": "
             "0.5, "
             "\"prefix_cos\": 0.5}, {\"mse_nrm\": 0.5, \"cos\": 0.5, \"prefix_mse_nrm\": 0.5, "
             "\"prefix_cos\": -1e999}]",
             "line 2: parts[1].prefix_cos is not"},
            {"\"mse_nrm\": 0.5, \"parts\": [{\"mse_nrm\": 0.3}]",
             "line 2: parts[0].cos is missing"}};
        const char *bj = "tests/tmp/eval_inf.jsonl";
        nla_eval_report_params rp;
        memset(&rp, 0, sizeof rp);
        for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
            char rows[512];
            text_buf t = {NULL, 0};
            snprintf(rows, sizeof rows, "{\"sample_idx\": 0, \"mse_nrm\": 0.5, \"cos\": 0.5}\n"
                     "{\"sample_idx\": 1, %s}\n", bad[i].row);
            spit_str(bj, rows);
            CHECK_EQ(nla_eval_summary(bj, &rp, collect, &t, err, sizeof err), NLA_ERR_FORMAT);
            CHECK_MSG(strstr(err, bj) && strstr(err, bad[i].want), "%s: %s", bad[i].row, err);
            free(t.p);
            unlink("tests/tmp/eval_inf.html");
            CHECK_EQ(nla_eval_report_html(bj, "tests/tmp/eval_inf.html", &rp, err, sizeof err),
                     NLA_ERR_FORMAT);
            CHECK(access("tests/tmp/eval_inf.html", F_OK) != 0);
        }
        unlink(bj);
    }

    /* hostile results: markup in every text field (no script or element
       may get into the report), a sample_idx of 10^15, an error of 1e300,
       a 20-paragraph explanation, 3 MB of unclosed curly quotes, a
       2000-byte source name (whole in the JSON summary) */
    {
        const char *hd = "tests/tmp/eval_hostile",
                   *evil = "</script><script>alert(1)</script><img src=x onerror=alert(2)>";
        char path[256], row[1024], *big = (char *)malloc(8u << 20), *h;
        size_t n = 0;
        FILE *f;
        mkdir(hd, 0755);
        snprintf(path, sizeof path, "%s/results.jsonl", hd);
        f = fopen(path, "wb");
        snprintf(row, sizeof row,
                 "{\"sample_idx\": 1000000000000000, \"source\": \"%s\", \"role\": \"%s\", "
                 "\"token_str\": \"%s\", "
                 "\"text_preview\": \"%s\", \"explanation\": \"%s\", \"mse_nrm\": 1e300}\n",
                 evil, evil, evil, evil, evil);
        fputs(row, f);
        n += (size_t)sprintf(big + n, "{\"sample_idx\": 1, \"source\": \"");
        for (int i = 0; i < 2000; i++) big[n++] = 's';
        n += (size_t)sprintf(big + n, "\", \"mse_nrm\": 0.01, \"explanation\": \"");
        for (int i = 0; i < 19; i++)
            n += (size_t)sprintf(big + n, "Part %d: \\\"quoted\\\" text.\\n\\n", i);
        n += (size_t)sprintf(big + n, "Final token \\\"x\\\" ends it.\"}\n{\"sample_idx\": 2, "
                                      "\"mse_nrm\": 0.02, \"explanation\": \"");
        for (int i = 0; i < 1000000; i++) n += (size_t)sprintf(big + n, "\\u201c");
        n += (size_t)sprintf(big + n, "\"}\n");
        fwrite(big, 1, n, f);
        fclose(f);
        snprintf(path, sizeof path, "%s/tokens.jsonl", hd);
        f = fopen(path, "wb");
        fprintf(f,
                "{\"record_id\": \"%s\", \"source\": \"%s\", \"first_sample\": 1000000000000000, "
                "\"positions\": [0], \"tokens\": [\"%s\"]}\n",
                evil, evil, evil);
        fprintf(f, "{\"record_id\": 7, \"source\": \"x\", \"first_sample\": 18446744073709551615, "
                   "\"positions\": [0, 0, -1], \"tokens\": [\"a\", \"b\"]}\n");
        fclose(f);
        nla_eval_report_params rp;
        text_buf t = {NULL, 0};
        memset(&rp, 0, sizeof rp);
        rp.json = 1;
        CHECK_EQ(nla_eval_summary(hd, &rp, collect, &t, err, sizeof err), NLA_OK);
        CHECK(t.p && after(t.p, "\"rows\": ") == 3);
        CHECK_MSG(t.p && fabs(after(t.p, "\"final_token_paragraph\": ") - 1.0 / 3) < 1e-9,
                  "the last of 20 paragraphs is the final-token one");
        CHECK(t.p && fabs(after(t.p, "\"quoted_context\": ") - 1.0 / 3) < 1e-9);
        memset(big, 's', 2000);
        big[2000] = 0;
        CHECK_MSG(t.p && strstr(t.p, big), "a long source name is cut in the JSON summary");
        free(t.p);
        snprintf(path, sizeof path, "%s/report.html", hd);
        CHECK_EQ(nla_eval_report_html(hd, path, &rp, err, sizeof err), NLA_OK);
        h = slurp(path, NULL);
        CHECK(h && !strstr(h, "<img") && !strstr(h, "alert(1)</script>") &&
              strstr(h, "&lt;img src=x onerror=alert(2)&gt;"));
        int n_open = 0, n_close = 0;
        for (const char *q = h; q && (q = strstr(q, "<script")) != NULL; q++) n_open++;
        for (const char *q = h; q && (q = strstr(q, "</script")) != NULL; q++) n_close++;
        CHECK_MSG(n_open == 1 && n_close == 1,
                  "the report has %d <script and %d </script, not its own one", n_open, n_close);
        free(h);
        free(big);
        unlink(path);
        rm_dir(hd);
    }

    /* merge refuses hostile params.json and rows that are not JSON, naming them */
    {
        const char *bd = "tests/tmp/eval_badshard", *dirs[1] = {"tests/tmp/eval_badshard"};
        char path[256];
        mkdir(bd, 0755);
        snprintf(path, sizeof path, "%s/params.json", bd);
        spit_str(path, "{\"samples\": 1e300, \"d_model\": 16,\n\"shard\": \"1/1\"}\n");
        snprintf(path, sizeof path, "%s/tokens.jsonl", bd);
        spit_str(path, "");
        snprintf(path, sizeof path, "%s/results.jsonl", bd);
        spit_str(path, "{\"sample_idx\": 0}\nnot json\n");
        CHECK_EQ(nla_eval_merge("tests/tmp", dirs, 1, err, sizeof err), NLA_ERR_FORMAT);
        CHECK(strstr(err, "samples") != NULL);
        snprintf(path, sizeof path, "%s/params.json", bd);
        spit_str(path, "{\"samples\": 2, \"d_model\": 16,\n\"shard\": \"1/1\"}\n");
        CHECK_EQ(nla_eval_merge("tests/tmp", dirs, 1, err, sizeof err), NLA_ERR_FORMAT);
        CHECK_MSG(strstr(err, "eval_badshard/results.jsonl: line 2 is not JSON"), "merge: %s",
                  err);
        const char *with_null[2] = {NULL, bd};
        CHECK_EQ(nla_eval_merge("tests/tmp", with_null, 2, err, sizeof err), NLA_ERR_ARG);
        CHECK_MSG(strstr(err, "shard folder 0 is NULL"), "merge: %s", err);
        rm_dir(bd);
    }

    /* the HTML report: self-contained; rendered by headless Chromium */
    {
        nla_eval_report_params rp;
        memset(&rp, 0, sizeof rp);
        CHECK_EQ(nla_eval_report_html(ref, "tests/tmp/eval_report.html", &rp, err, sizeof err),
                 NLA_OK);
        char *h = slurp("tests/tmp/eval_report.html", NULL);
        CHECK(h && !strstr(h, "http:") && !strstr(h, "https:") && !strstr(h, "src=") &&
              strstr(h, "<svg") && strstr(h, "class=\"s\""));
        free(h);
        if (access("/usr/bin/chromium", X_OK) == 0) {
            int rc = system(
                "timeout 120 /usr/bin/chromium --headless --no-sandbox --disable-gpu "
                "--user-data-dir=\"$PWD/tests/tmp/chromium\" --dump-dom "
                "\"file://$PWD/tests/tmp/eval_report.html\" > tests/tmp/eval_dom.html 2>/dev/null");
            char *dom = slurp("tests/tmp/eval_dom.html", NULL);
            CHECK_EQ(rc, 0);
            CHECK_MSG(dom && strstr(dom, "report ready: 14 rows, 14 tokens shown in 7 texts"),
                      "the report's script did not run in Chromium");
            CHECK(dom && strstr(dom, "mse_nrm by chat role") && strstr(dom, "role=asst_content"));
            free(dom);
        } else {
            SKIP("the report's rendering in headless Chromium: /usr/bin/chromium is not installed");
        }
    }
    return test_report();
}
#endif /* NLA_NO_EVAL */
