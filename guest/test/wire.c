/*
 * The agent's wire format (agent_proto.c) against the golden frames in test/fixtures/ (their
 * README says what each holds): every request parses field by field as the handlers read it, and
 * every reply the agent builds comes out byte for byte. The host side reads the same files in
 * test/wire-fixtures.test.ts. Usage: wire-test FIXTURES_DIR; exit status 0 when all match.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent_proto.h"

#define TEST_NAME "wire-test"
#include "test-check.h"

struct file {
	uint8_t bytes[4096];
	size_t len;
};

static void load(const char *dir, const char *name, struct file *f)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	f->len = 0;
	FILE *fp = fopen(path, "rb");
	if (!fp) {
		fprintf(stderr, "wire-test: open %s: %s\n", path, strerror(errno));
		exit(2);
	}
	f->len = fread(f->bytes, 1, sizeof f->bytes, fp);
	if (ferror(fp) || !feof(fp)) {
		fprintf(stderr, "wire-test: read %s: %s\n", path, ferror(fp) ? strerror(errno) : "larger than 4 KiB");
		exit(2);
	}
	fclose(fp);
}

/* The request in `name`: its header checked, its payload handed back in a reader. */
static struct reader request(const char *dir, const char *name, struct file *f, uint16_t type, uint16_t flags, uint32_t id)
{
	load(dir, name, f);
	struct frame fr = frame_header_get(f->bytes);
	CHECK(f->len >= FRAME_HEADER_BYTES && fr.len == f->len - FRAME_HEADER_BYTES, "%s: length %u, file has %zu bytes", name, fr.len, f->len);
	CHECK(fr.type == type && fr.flags == flags && fr.id == id, "%s: type %u flags %u id %u", name, fr.type, fr.flags, fr.id);
	return (struct reader){ .p = fr.payload, .left = fr.len };
}

static void expect_string(struct reader *r, const char *name, const char *field, const char *want)
{
	char *got = read_string(r, field);
	CHECK(got && strcmp(got, want) == 0, "%s: %s is %s, expected %s", name, field, got ? got : r->error, want);
	free(got);
}

static void expect_end(struct reader *r, const char *name)
{
	reader_expect_end(r, name);
	CHECK(!r->error, "%s", r->error);
}

/* A reply built as the agent builds it (conn_send: frame_header_put, then the payload). */
static void expect_reply(const char *dir, const char *name, uint16_t type, uint32_t id, const void *payload, size_t len)
{
	struct file f;
	load(dir, name, &f);
	uint8_t built[4096];
	frame_header_put(built, type, id, (uint32_t)len);
	if (len)
		memcpy(built + FRAME_HEADER_BYTES, payload, len);
	CHECK(f.len == FRAME_HEADER_BYTES + len && memcmp(f.bytes, built, f.len) == 0, "%s: the agent's reply differs from the golden bytes", name);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: wire-test FIXTURES_DIR\n");
		return 2;
	}
	const char *dir = argv[1];
	struct file f;

	/* EXEC: argv, env, cwd (handle_exec) */
	struct reader r = request(dir, "agent-exec-request.bin", &f, REQ_EXEC, 0, 0x0a0b0c0d);
	uint32_t argc_got = 0, envc = 0;
	char **args = read_string_list(&r, "argv", &argc_got);
	char **env = read_string_list(&r, "env", &envc);
	CHECK(args && argc_got == 3 && strcmp(args[0], "/bin/sh") == 0 && strcmp(args[1], "-c") == 0 && strcmp(args[2], "exit 3") == 0 && !args[3],
	      "agent-exec-request.bin: argv");
	CHECK(env && envc == 1 && strcmp(env[0], "SLIPWAY_FIXTURE=1") == 0, "agent-exec-request.bin: env");
	free_string_list(args);
	free_string_list(env);
	expect_string(&r, "agent-exec-request.bin", "cwd", "/");
	expect_end(&r, "agent-exec-request.bin");

	/* EXIT: i32 status, i32 signal (proc_maybe_finish) */
	uint8_t status[8];
	put_u32(status, 3);
	put_u32(status + 4, 0);
	expect_reply(dir, "agent-exit-reply.bin", REP_EXIT, 0x0a0b0c0d, status, sizeof status);

	/* SIGNAL: i32 signal (handle_signal) */
	r = request(dir, "agent-signal-request.bin", &f, REQ_SIGNAL, 0, 0x01020304);
	CHECK(read_u32(&r, "signal") == 15, "agent-signal-request.bin: signal");
	expect_end(&r, "agent-signal-request.bin");

	/* ERROR: i32 errno, then the message (send_error) */
	uint8_t error[64];
	const char *message = "SIGNAL: no process with id 16909060";
	put_u32(error, ESRCH);
	memcpy(error + 4, message, strlen(message));
	expect_reply(dir, "agent-error-reply.bin", REP_ERROR, 0x01020304, error, 4 + strlen(message));

	/* WRITE_FILE: path, u32 mode, u64 offset, then the data (handle_write_file) */
	r = request(dir, "agent-write-file-request.bin", &f, REQ_WRITE_FILE, 0, 0x105);
	expect_string(&r, "agent-write-file-request.bin", "path", "/dev/null");
	CHECK(read_u32(&r, "mode") == 0644, "agent-write-file-request.bin: mode");
	CHECK(read_u64(&r, "offset") == 4096, "agent-write-file-request.bin: offset");
	CHECK(!r.error && r.left == 7 && memcmp(r.p, "golden\n", 7) == 0, "agent-write-file-request.bin: data");
	expect_reply(dir, "agent-ok-reply.bin", REP_OK, 0x105, NULL, 0);

	/* READ_FILE: path, u64 offset, u32 max length (handle_read_file) */
	r = request(dir, "agent-read-file-request.bin", &f, REQ_READ_FILE, 0, 0x106);
	expect_string(&r, "agent-read-file-request.bin", "path", "/dev/null");
	CHECK(read_u64(&r, "offset") == 0, "agent-read-file-request.bin: offset");
	CHECK(read_u32(&r, "max length") == MAX_READ_FILE_BYTES, "agent-read-file-request.bin: max length");
	expect_end(&r, "agent-read-file-request.bin");
	expect_reply(dir, "agent-data-reply.bin", REP_DATA, 0x106, NULL, 0);

	return test_result("every agent fixture matches");
}
