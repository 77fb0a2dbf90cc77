/*
 * Unit tests of the message codec (msg.c), and a driver the host's tests cross-check it with.
 *
 *   test_msg                       run every test: one line a test ("ok NAME" or "FAIL NAME:
 *                                  what"), exit 1 if any failed
 *   test_msg --decode-hex HEX      decode one message, print its fields on one line (or
 *                                  "error: WHY"), as tests/unit/test_cdaemon.py formats
 *                                  protocol.decode's
 *   test_msg --copen ID VALUE      the copen command, or "error"
 *   test_msg --span OFF LEN        the 4096-aligned span: "START LENGTH", or "error"
 *   test_msg --blob-hex HEX        the blob name of a cookie key and its image: "NAME IMAGE", or "error"
 *
 * The messages are built byte by byte, little endian, the way protocol.py's encode_* build them.
 * Built with: cc -std=c11 -Wall -Wextra -Werror -O2 test_msg.c msg.c
 */
#define _POSIX_C_SOURCE 200809L

#include "msg.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the tests build little-endian messages, the kernel's order on the guests"
#endif

/* ---- building messages, as protocol.encode_* do ----------------------------------------- */

struct buf {
	uint8_t b[2048];
	size_t n;
};

static void put_u32(struct buf *m, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		m->b[m->n++] = (uint8_t)(v >> (8 * i));
}

static void put_u64(struct buf *m, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		m->b[m->n++] = (uint8_t)(v >> (8 * i));
}

static void put_bytes(struct buf *m, const void *p, size_t n)
{
	memcpy(m->b + m->n, p, n);
	m->n += n;
}

static void put_header(struct buf *m, uint32_t msg_id, uint32_t opcode, uint32_t len, uint32_t object_id)
{
	put_u32(m, msg_id);
	put_u32(m, opcode);
	put_u32(m, len);
	put_u32(m, object_id);
}

/* protocol.encode_open: the volume key gets its NUL, the cookie key goes as it is */
static struct buf encode_open(uint32_t msg_id, uint32_t object_id, const char *volume_key,
			      const void *cookie_key, size_t cookie_len, uint32_t fd, uint32_t flags)
{
	struct buf m = {.n = 0};
	size_t vlen = strlen(volume_key) + 1;

	put_header(&m, msg_id, CACHEFILES_OP_OPEN, (uint32_t)(16 + 16 + vlen + cookie_len), object_id);
	put_u32(&m, (uint32_t)vlen);
	put_u32(&m, (uint32_t)cookie_len);
	put_u32(&m, fd);
	put_u32(&m, flags);
	put_bytes(&m, volume_key, vlen);
	put_bytes(&m, cookie_key, cookie_len);
	return m;
}

static struct buf encode_read(uint32_t msg_id, uint32_t object_id, uint64_t off, uint64_t len)
{
	struct buf m = {.n = 0};

	put_header(&m, msg_id, CACHEFILES_OP_READ, 32, object_id);
	put_u64(&m, off);
	put_u64(&m, len);
	return m;
}

static struct buf encode_close(uint32_t msg_id, uint32_t object_id)
{
	struct buf m = {.n = 0};

	put_header(&m, msg_id, CACHEFILES_OP_CLOSE, 16, object_id);
	return m;
}

/* ---- a very small test runner ------------------------------------------------------------ */

struct run {
	int failed;     /* checks failed in the current test */
	int tests_failed;
	char what[256]; /* the first failure of the current test */
};

#define CHECK(r, cond)                                                                          \
	do {                                                                                    \
		if (!(cond) && (r)->failed++ == 0)                                              \
			snprintf((r)->what, sizeof((r)->what), "line %d: %s", __LINE__, #cond); \
	} while (0)

/* A decode expected to fail with @status and @why. */
static void check_refused(struct run *r, const struct buf *m, enum msg_status status, const char *why)
{
	struct msg out;
	char got[MSG_WHY_MAX] = "";

	CHECK(r, msg_decode(m->b, m->n, &out, got, sizeof(got)) == status);
	CHECK(r, strcmp(got, why) == 0);
	/* the reason is optional */
	CHECK(r, msg_decode(m->b, m->n, &out, NULL, 0) == status);
}

/* ---- the tests -------------------------------------------------------------------------- */

static void test_layout_matches_uapi(struct run *r)
{
	struct buf m = encode_read(1, 2, 3, 4);
	static const uint8_t header[16] = {1, 0, 0, 0, 2, 0, 0, 0, 32, 0, 0, 0, 2, 0, 0, 0};

	CHECK(r, sizeof(struct cachefiles_msg) == 16);
	CHECK(r, sizeof(struct cachefiles_open) == 16);
	CHECK(r, sizeof(struct cachefiles_read) == 16);
	CHECK(r, m.n == 32 && memcmp(m.b, header, 16) == 0);
	/* _IOW(0x98, 1, int): write direction, 4 bytes of argument, type 0x98, number 1 */
	CHECK(r, CACHEFILES_IOC_READ_COMPLETE == 0x40049801UL);
	CHECK(r, CACHEFILES_OP_OPEN == 0 && CACHEFILES_OP_CLOSE == 1 && CACHEFILES_OP_READ == 2);
}

static void test_open_decodes(struct run *r)
{
	struct buf m = encode_open(7, 3, "erofs,img0.1x2", "img0.1x2", 8, 12, 5);
	struct msg out;

	CHECK(r, msg_decode(m.b, m.n, &out, NULL, 0) == MSG_OK);
	CHECK(r, out.op == MSG_OPEN && out.msg_id == 7 && out.object_id == 3);
	CHECK(r, out.open.volume_key_len == 14 && memcmp(out.open.volume_key, "erofs,img0.1x2", 14) == 0);
	CHECK(r, out.open.cookie_key_len == 8 && memcmp(out.open.cookie_key, "img0.1x2", 8) == 0);
	CHECK(r, out.open.fd == 12 && out.open.flags == 5);
	CHECK(r, msg_volume_is_erofs(&out.open));
	CHECK(r, strcmp(msg_op_name(out.op), "OPEN") == 0);
}

static void test_open_strips_the_volume_keys_nuls(struct run *r)
{
	/* the volume key's size counts its NUL (and here two more); the cookie key keeps its own */
	struct buf m = {.n = 0};
	struct msg out;

	put_header(&m, 1, CACHEFILES_OP_OPEN, 16 + 16 + 9 + 3, 2);
	put_u32(&m, 9);
	put_u32(&m, 3);
	put_u32(&m, 4);
	put_u32(&m, 0);
	put_bytes(&m, "erofs,x\0\0", 9);
	put_bytes(&m, "x\0\0", 3);
	CHECK(r, msg_decode(m.b, m.n, &out, NULL, 0) == MSG_OK);
	CHECK(r, out.open.volume_key_len == 7 && memcmp(out.open.volume_key, "erofs,x", 7) == 0);
	CHECK(r, out.open.cookie_key_len == 3);
}

static void test_open_with_empty_keys(struct run *r)
{
	struct buf m = {.n = 0};
	struct msg out;

	put_header(&m, 1, CACHEFILES_OP_OPEN, 32, 2);
	put_u32(&m, 0);
	put_u32(&m, 0);
	put_u32(&m, 4);
	put_u32(&m, 0);
	CHECK(r, msg_decode(m.b, m.n, &out, NULL, 0) == MSG_OK);
	CHECK(r, out.open.volume_key_len == 0 && out.open.cookie_key_len == 0);
	CHECK(r, !msg_volume_is_erofs(&out.open));
}

static void test_read_decodes(struct run *r)
{
	struct buf m = encode_read(9, 4, UINT64_C(1) << 40, 131072);
	struct msg out;

	CHECK(r, msg_decode(m.b, m.n, &out, NULL, 0) == MSG_OK);
	CHECK(r, out.op == MSG_READ && out.msg_id == 9 && out.object_id == 4);
	CHECK(r, out.read.off == UINT64_C(1) << 40 && out.read.len == 131072);
	CHECK(r, strcmp(msg_op_name(out.op), "READ") == 0);
}

static void test_close_decodes(struct run *r)
{
	struct buf m = encode_close(2, 0xFFFFFFFFu);
	struct msg out;

	CHECK(r, msg_decode(m.b, m.n, &out, NULL, 0) == MSG_OK);
	CHECK(r, out.op == MSG_CLOSE && out.msg_id == 2 && out.object_id == 0xFFFFFFFFu);
	CHECK(r, strcmp(msg_op_name(out.op), "CLOSE") == 0);
}

static void test_short_message_is_refused(struct run *r)
{
	struct buf m = {.n = 8};
	struct buf none = {.n = 0};
	struct buf fifteen = encode_close(1, 1);

	memset(m.b, 0, 8);
	fifteen.n = 15;
	check_refused(r, &m, MSG_ERR_SHORT, "short message: 8 bytes");
	check_refused(r, &none, MSG_ERR_SHORT, "short message: 0 bytes");
	check_refused(r, &fifteen, MSG_ERR_SHORT, "short message: 15 bytes");
}

static void test_header_length_must_match_the_read(struct run *r)
{
	struct buf cut = encode_read(1, 2, 3, 4);
	struct buf longer = encode_close(1, 1);

	cut.n--;
	check_refused(r, &cut, MSG_ERR_LENGTH, "header says 32 bytes, read returned 31");
	put_u32(&longer, 0);
	check_refused(r, &longer, MSG_ERR_LENGTH, "header says 16 bytes, read returned 20");
}

static void test_short_open_payload_is_refused(struct run *r)
{
	struct buf m = {.n = 0};

	put_header(&m, 1, CACHEFILES_OP_OPEN, 16 + 12, 1);
	put_u32(&m, 0);
	put_u32(&m, 0);
	put_u32(&m, 4);
	check_refused(r, &m, MSG_ERR_OPEN_SHORT, "short OPEN payload");
}

static void test_open_key_sizes_must_add_up(struct run *r)
{
	struct buf more = encode_open(1, 1, "erofs,x", "x", 1, 5, 0);
	struct buf fewer = encode_open(1, 1, "erofs,x", "x", 1, 5, 0);
	struct buf wraps = encode_open(1, 1, "erofs,x", "x", 1, 5, 0);

	more.b[16]++; /* volume_key_size one too many, as test_protocol does */
	check_refused(r, &more, MSG_ERR_KEYS, "OPEN keys: 9+1 declared, 9 present");
	fewer.b[20] = 0; /* cookie_key_size 0 */
	check_refused(r, &fewer, MSG_ERR_KEYS, "OPEN keys: 8+0 declared, 9 present");
	/* 0xFFFFFFFF + 10 is 9 in 32 bits: the sum must not wrap */
	memset(wraps.b + 16, 0xFF, 4);
	wraps.b[20] = 10;
	check_refused(r, &wraps, MSG_ERR_KEYS, "OPEN keys: 4294967295+10 declared, 9 present");
}

static void test_read_payload_must_be_one_struct(struct run *r)
{
	struct buf shorter = {.n = 0};
	struct buf longer = {.n = 0};

	put_header(&shorter, 1, CACHEFILES_OP_READ, 24, 1);
	put_u64(&shorter, 0);
	check_refused(r, &shorter, MSG_ERR_READ_SIZE, "READ payload of 8 bytes");
	put_header(&longer, 1, CACHEFILES_OP_READ, 40, 1);
	put_u64(&longer, 0);
	put_u64(&longer, 4096);
	put_u64(&longer, 0);
	check_refused(r, &longer, MSG_ERR_READ_SIZE, "READ payload of 24 bytes");
}

static void test_unknown_opcode_is_refused(struct run *r)
{
	struct buf m = encode_close(1, 1);

	m.b[4] = 9;
	check_refused(r, &m, MSG_ERR_OPCODE, "unknown opcode 9");
	m.b[4] = 3;
	check_refused(r, &m, MSG_ERR_OPCODE, "unknown opcode 3");
}

static void test_why_is_truncated_to_its_buffer(struct run *r)
{
	struct buf m = encode_close(1, 1);
	struct msg out;
	char why[6];

	m.n = 4;
	CHECK(r, msg_decode(m.b, m.n, &out, why, sizeof(why)) == MSG_ERR_SHORT);
	CHECK(r, strcmp(why, "short") == 0);
}

static void test_copen_commands(struct run *r)
{
	char out[MSG_COPEN_MAX];
	char tiny[8];

	CHECK(r, msg_copen(out, sizeof(out), 11, 3 * 4096) == 14 && strcmp(out, "copen 11,12288") == 0);
	CHECK(r, msg_copen(out, sizeof(out), 12, -ENOENT) > 0 && strcmp(out, "copen 12,-2") == 0);
	CHECK(r, msg_copen(out, sizeof(out), 0, 0) > 0 && strcmp(out, "copen 0,0") == 0);
	CHECK(r, msg_copen(out, sizeof(out), 1, -4095) > 0 && strcmp(out, "copen 1,-4095") == 0);
	CHECK(r, msg_copen(out, sizeof(out), 1, -4096) == -1);
	CHECK(r, msg_copen(out, sizeof(out), UINT32_MAX, INT64_MAX) > 0 &&
		 strcmp(out, "copen 4294967295,9223372036854775807") == 0);
	CHECK(r, msg_copen(tiny, sizeof(tiny), 1, 1) == -1);
}

static void test_blob_names(struct run *r)
{
	char name[16];

	CHECK(r, msg_blob_name((const uint8_t *)"img0.1x2", 8, name, sizeof(name)) == 0 && strcmp(name, "img0.1x2") == 0);
	CHECK(r, msg_image_len(name) == 4);
	CHECK(r, msg_blob_name((const uint8_t *)"img1.3.waiter2\0\0", 16, name, sizeof(name)) == 0 &&
		 strcmp(name, "img1.3.waiter2") == 0);
	CHECK(r, msg_image_len(name) == 4);
	CHECK(r, msg_blob_name((const uint8_t *)"plain", 5, name, sizeof(name)) == 0 && msg_image_len(name) == 5);
	CHECK(r, msg_blob_name((const uint8_t *)"", 0, name, sizeof(name)) == 0 && name[0] == '\0');
	/* a NUL inside the name: no image is called that */
	CHECK(r, msg_blob_name((const uint8_t *)"img0\0x", 6, name, sizeof(name)) == -1);
	/* 16 characters do not fit in 16 bytes with the NUL */
	CHECK(r, msg_blob_name((const uint8_t *)"0123456789abcdef", 16, name, sizeof(name)) == -1);
	CHECK(r, msg_blob_name((const uint8_t *)"0123456789abcde", 15, name, sizeof(name)) == 0);
}

static void test_aligned_spans(struct run *r)
{
	uint64_t start = 1, span = 1;

	CHECK(r, msg_aligned_span(4096 + 100, 50, 4096, &start, &span) == 0 && start == 4096 && span == 4096);
	CHECK(r, msg_aligned_span(0, 0, 4096, &start, &span) == 0 && start == 0 && span == 0);
	CHECK(r, msg_aligned_span(4096, 4096, 4096, &start, &span) == 0 && start == 4096 && span == 4096);
	CHECK(r, msg_aligned_span(4095, 2, 4096, &start, &span) == 0 && start == 0 && span == 8192);
	CHECK(r, msg_aligned_span(1 << 20, 131072, 4096, &start, &span) == 0 && start == 1 << 20 && span == 131072);
	CHECK(r, msg_aligned_span(UINT64_MAX - 10, 5, 4096, &start, &span) == -1);
	CHECK(r, msg_aligned_span(UINT64_MAX, 1, 4096, &start, &span) == -1);
	CHECK(r, msg_aligned_span(0, 1, 0, &start, &span) == -1);
}

/* ---- the cross-check driver -------------------------------------------------------------- */

static int from_hex(const char *hex, uint8_t *out, size_t out_size, size_t *n)
{
	size_t len = strlen(hex);

	if (len % 2 != 0 || len / 2 > out_size)
		return -1;
	for (size_t i = 0; i < len / 2; i++) {
		unsigned int byte;

		if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
			return -1;
		out[i] = (uint8_t)byte;
	}
	*n = len / 2;
	return 0;
}

static void print_hex(const void *p, size_t n)
{
	const uint8_t *b = p;

	for (size_t i = 0; i < n; i++)
		printf("%02x", b[i]);
}

/* One line of fields, in the order and format the Python test prints protocol.decode's. */
static int decode_hex(const char *hex)
{
	uint8_t buf[4096];
	size_t n;
	struct msg m;
	char why[MSG_WHY_MAX];

	if (from_hex(hex, buf, sizeof(buf), &n) != 0) {
		fprintf(stderr, "test_msg: not hex: %s\n", hex);
		return 2;
	}
	if (msg_decode(buf, n, &m, why, sizeof(why)) != MSG_OK) {
		printf("error: %s\n", why);
		return 0;
	}
	printf("%s msg_id=%" PRIu32 " object_id=%" PRIu32, msg_op_name(m.op), m.msg_id, m.object_id);
	if (m.op == MSG_OPEN) {
		printf(" volume_key=");
		print_hex(m.open.volume_key, m.open.volume_key_len);
		printf(" cookie_key=");
		print_hex(m.open.cookie_key, m.open.cookie_key_len);
		printf(" fd=%" PRIu32 " flags=%" PRIu32, m.open.fd, m.open.flags);
	} else if (m.op == MSG_READ) {
		printf(" off=%" PRIu64 " len=%" PRIu64, m.read.off, m.read.len);
	}
	printf("\n");
	return 0;
}

static int parse_i64(const char *s, int64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoll(s, &end, 10);
	return errno != 0 || end == s || *end != '\0' ? -1 : 0;
}

static int parse_u64(const char *s, uint64_t *v)
{
	char *end;

	errno = 0;
	*v = strtoull(s, &end, 10);
	return errno != 0 || end == s || *end != '\0' || s[0] == '-' ? -1 : 0;
}

static int driver(int argc, char **argv)
{
	if (argc == 3 && strcmp(argv[1], "--decode-hex") == 0)
		return decode_hex(argv[2]);
	if (argc == 4 && strcmp(argv[1], "--copen") == 0) {
		uint64_t id;
		int64_t value;
		char out[MSG_COPEN_MAX];

		if (parse_u64(argv[2], &id) != 0 || id > UINT32_MAX || parse_i64(argv[3], &value) != 0)
			return 2;
		if (msg_copen(out, sizeof(out), (uint32_t)id, value) < 0)
			printf("error\n");
		else
			printf("%s\n", out);
		return 0;
	}
	if (argc == 4 && strcmp(argv[1], "--span") == 0) {
		uint64_t off, len, start, span;

		if (parse_u64(argv[2], &off) != 0 || parse_u64(argv[3], &len) != 0)
			return 2;
		if (msg_aligned_span(off, len, 4096, &start, &span) != 0)
			printf("error\n");
		else
			printf("%" PRIu64 " %" PRIu64 "\n", start, span);
		return 0;
	}
	if (argc == 3 && strcmp(argv[1], "--blob-hex") == 0) {
		uint8_t key[1024];
		size_t n;
		char name[256];

		if (from_hex(argv[2], key, sizeof(key), &n) != 0)
			return 2;
		if (msg_blob_name(key, n, name, sizeof(name)) != 0)
			printf("error\n");
		else
			printf("%s %.*s\n", name, (int)msg_image_len(name), name);
		return 0;
	}
	fprintf(stderr, "test_msg: usage: test_msg [--decode-hex HEX | --copen ID VALUE | --span OFF LEN | --blob-hex HEX]\n");
	return 2;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		void (*fn)(struct run *);
	} tests[] = {
		{"layout_matches_uapi", test_layout_matches_uapi},
		{"open_decodes", test_open_decodes},
		{"open_strips_the_volume_keys_nuls", test_open_strips_the_volume_keys_nuls},
		{"open_with_empty_keys", test_open_with_empty_keys},
		{"read_decodes", test_read_decodes},
		{"close_decodes", test_close_decodes},
		{"short_message_is_refused", test_short_message_is_refused},
		{"header_length_must_match_the_read", test_header_length_must_match_the_read},
		{"short_open_payload_is_refused", test_short_open_payload_is_refused},
		{"open_key_sizes_must_add_up", test_open_key_sizes_must_add_up},
		{"read_payload_must_be_one_struct", test_read_payload_must_be_one_struct},
		{"unknown_opcode_is_refused", test_unknown_opcode_is_refused},
		{"why_is_truncated_to_its_buffer", test_why_is_truncated_to_its_buffer},
		{"copen_commands", test_copen_commands},
		{"blob_names", test_blob_names},
		{"aligned_spans", test_aligned_spans},
	};
	struct run r = {0, 0, ""};

	if (argc > 1)
		return driver(argc, argv);
	for (size_t i = 0; i < sizeof(tests) / sizeof(tests[0]); i++) {
		r.failed = 0;
		r.what[0] = '\0';
		tests[i].fn(&r);
		if (r.failed) {
			r.tests_failed++;
			printf("FAIL %s: %s\n", tests[i].name, r.what);
		} else {
			printf("ok %s\n", tests[i].name);
		}
	}
	return r.tests_failed ? 1 : 0;
}
