/*
 * The message codec of the C daemon: pure functions, no I/O (see msg.h).
 *
 * The kernel writes its messages in its own byte order, which is the daemon's: the structs are
 * copied out with memcpy (the buffer need not be aligned). protocol.py reads them as little
 * endian, which is the same on the x86 guests this runs in.
 */
#include "msg.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

_Static_assert(sizeof(struct cachefiles_msg) == 16, "struct cachefiles_msg is 16 bytes");
_Static_assert(sizeof(struct cachefiles_open) == 16, "struct cachefiles_open is 16 bytes");
_Static_assert(sizeof(struct cachefiles_read) == 16, "struct cachefiles_read is 16 bytes");
_Static_assert(offsetof(struct cachefiles_msg, object_id) == 12, "object_id at 12");
_Static_assert(offsetof(struct cachefiles_open, flags) == 12, "flags at 12");
_Static_assert(offsetof(struct cachefiles_read, len) == 8, "len at 8");

/* Writes the reason for a refusal, if the caller wants it; returns @status. */
static enum msg_status refuse(enum msg_status status, char *why, size_t why_size, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static enum msg_status refuse(enum msg_status status, char *why, size_t why_size, const char *fmt, ...)
{
	if (why != NULL && why_size > 0) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(why, why_size, fmt, ap);
		va_end(ap);
	}
	return status;
}

enum msg_status msg_decode(const void *buf, size_t n, struct msg *out, char *why, size_t why_size)
{
	const uint8_t *bytes = buf;
	struct cachefiles_msg header;
	size_t body_len;
	const uint8_t *body;

	if (n < sizeof(header))
		return refuse(MSG_ERR_SHORT, why, why_size, "short message: %zu bytes", n);
	memcpy(&header, bytes, sizeof(header));
	if (header.len != n)
		return refuse(MSG_ERR_LENGTH, why, why_size, "header says %" PRIu32 " bytes, read returned %zu",
			      header.len, n);
	body = bytes + sizeof(header);
	body_len = n - sizeof(header);
	memset(out, 0, sizeof(*out));
	out->msg_id = header.msg_id;
	out->object_id = header.object_id;

	switch (header.opcode) {
	case CACHEFILES_OP_OPEN: {
		struct cachefiles_open load;
		const uint8_t *keys;
		size_t keys_len;
		size_t vlen;

		if (body_len < sizeof(load))
			return refuse(MSG_ERR_OPEN_SHORT, why, why_size, "short OPEN payload");
		memcpy(&load, body, sizeof(load));
		keys = body + sizeof(load);
		keys_len = body_len - sizeof(load);
		/* summed in 64 bits: two u32 sizes may not add up in 32 */
		if ((uint64_t)load.volume_key_size + load.cookie_key_size != keys_len)
			return refuse(MSG_ERR_KEYS, why, why_size,
				      "OPEN keys: %" PRIu32 "+%" PRIu32 " declared, %zu present",
				      load.volume_key_size, load.cookie_key_size, keys_len);
		vlen = load.volume_key_size;
		while (vlen > 0 && keys[vlen - 1] == '\0')
			vlen--;
		out->op = MSG_OPEN;
		out->open.volume_key = (const char *)keys;
		out->open.volume_key_len = vlen;
		out->open.cookie_key = keys + load.volume_key_size;
		out->open.cookie_key_len = load.cookie_key_size;
		out->open.fd = load.fd;
		out->open.flags = load.flags;
		return MSG_OK;
	}
	case CACHEFILES_OP_READ: {
		struct cachefiles_read load;

		if (body_len != sizeof(load))
			return refuse(MSG_ERR_READ_SIZE, why, why_size, "READ payload of %zu bytes", body_len);
		memcpy(&load, body, sizeof(load));
		out->op = MSG_READ;
		out->read.off = load.off;
		out->read.len = load.len;
		return MSG_OK;
	}
	case CACHEFILES_OP_CLOSE:
		/* a payload after a CLOSE header is not looked at, as protocol.decode does */
		out->op = MSG_CLOSE;
		return MSG_OK;
	default:
		return refuse(MSG_ERR_OPCODE, why, why_size, "unknown opcode %" PRIu32, header.opcode);
	}
}

const char *msg_op_name(enum msg_op op)
{
	switch (op) {
	case MSG_OPEN:
		return "OPEN";
	case MSG_CLOSE:
		return "CLOSE";
	case MSG_READ:
		return "READ";
	}
	return "?";
}

int msg_copen(char *out, size_t out_size, uint32_t msg_id, int64_t size_or_errno)
{
	int n;

	if (size_or_errno < -4095)
		return -1;
	n = snprintf(out, out_size, "copen %" PRIu32 ",%" PRId64, msg_id, size_or_errno);
	if (n < 0 || (size_t)n >= out_size)
		return -1;
	return n;
}

int msg_blob_name(const uint8_t *cookie_key, size_t len, char *out, size_t out_size)
{
	while (len > 0 && cookie_key[len - 1] == '\0')
		len--;
	if (len >= out_size || memchr(cookie_key, '\0', len) != NULL)
		return -1;
	memcpy(out, cookie_key, len);
	out[len] = '\0';
	return 0;
}

size_t msg_image_len(const char *blob_name)
{
	return strcspn(blob_name, ".");
}

int msg_volume_is_erofs(const struct msg_open *open)
{
	static const char prefix[] = "erofs,";

	return open->volume_key_len >= sizeof(prefix) - 1 &&
	       memcmp(open->volume_key, prefix, sizeof(prefix) - 1) == 0;
}

int msg_aligned_span(uint64_t off, uint64_t len, uint64_t align, uint64_t *start, uint64_t *span)
{
	uint64_t first, end, tail;

	if (align == 0 || len > UINT64_MAX - off)
		return -1;
	first = off - off % align;
	end = off + len;
	tail = end % align;
	if (tail != 0) {
		if (align - tail > UINT64_MAX - end)
			return -1;
		end += align - tail;
	}
	*start = first;
	*span = end - first;
	return 0;
}
