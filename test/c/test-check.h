/*
 * The check harness of the C fixture tests (guest/test/wire.c, vhost-user-blk/test/fixtures.c):
 * CHECK(cond, fmt, ...) reports a check that does not hold on stderr and counts it, and the test
 * goes on; test_result() is main's exit status once every check has run. Messages start with
 * TEST_NAME, which the test defines (a string literal) before including this header. Each test's
 * Makefile puts this folder on the include path.
 */
#ifndef SLIPWAY_TEST_CHECK_H
#define SLIPWAY_TEST_CHECK_H

#include <stdarg.h>
#include <stdio.h>

#ifndef TEST_NAME
#error "define TEST_NAME (the test program's name) before including test-check.h"
#endif

static int failures;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, TEST_NAME ": ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	failures++;
}

#define CHECK(cond, ...)                  \
	do {                              \
		if (!(cond))              \
			fail(__VA_ARGS__); \
	} while (0)

/* 1 when a check failed; otherwise 0, saying `passed` on stdout */
static int test_result(const char *passed)
{
	if (failures)
		return 1;
	printf(TEST_NAME ": %s\n", passed);
	return 0;
}

#endif
