/*
 * The cachefiles on-demand wire format, and the pure functions the C daemon (cdaemon.c) builds
 * on: decoding what read(2) returns from /dev/cachefiles, formatting `copen`, naming the blob a
 * cookie asks for, and the O_DIRECT-aligned span of a READ. No I/O, no allocation: what
 * guest_scripts/protocol.py is to the Python daemon, with the same validation rules and the
 * same error messages (tests/unit/test_cdaemon.py compares the two).
 *
 * The structs are those of include/uapi/linux/cachefiles.h, written out here (the __u32 of the
 * uapi are uint32_t) so that the daemon builds on a host without the kernel's headers.
 */
#ifndef CDAEMON_MSG_H
#define CDAEMON_MSG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/ioctl.h>

/* ---- include/uapi/linux/cachefiles.h --------------------------------------------------- */

/* The kernel refuses to hand a message to a smaller buffer (EMSGSIZE). */
#define CACHEFILES_MSG_MAX_SIZE 1024

enum cachefiles_opcode {
	CACHEFILES_OP_OPEN,
	CACHEFILES_OP_CLOSE,
	CACHEFILES_OP_READ,
};

/* Message header: @len counts the header and the payload that follows. */
struct cachefiles_msg {
	uint32_t msg_id;
	uint32_t opcode;
	uint32_t len;
	uint32_t object_id;
	uint8_t data[];
};

/* OPEN payload: @data holds the volume key (NUL-terminated, @volume_key_size bytes with its
 * NUL) and then the cookie key (binary, @cookie_key_size bytes); @fd is the anon fd the kernel
 * installed in the reading process. */
struct cachefiles_open {
	uint32_t volume_key_size;
	uint32_t cookie_key_size;
	uint32_t fd;
	uint32_t flags;
	uint8_t data[];
};

/* READ payload: the file range the kernel wants in the cache file. */
struct cachefiles_read {
	uint64_t off;
	uint64_t len;
};

/* The anon fd's "this READ is done" ioctl; its argument is the READ's msg_id, by value. */
#define CACHEFILES_IOC_READ_COMPLETE _IOW(0x98, 1, int)

/* ---- decoded messages ------------------------------------------------------------------- */

enum msg_op {
	MSG_OPEN = CACHEFILES_OP_OPEN,
	MSG_CLOSE = CACHEFILES_OP_CLOSE,
	MSG_READ = CACHEFILES_OP_READ,
};

/* Why a buffer is not a message (protocol.ProtocolError's cases). */
enum msg_status {
	MSG_OK = 0,
	MSG_ERR_SHORT,      /* fewer bytes than a header */
	MSG_ERR_LENGTH,     /* the header's len is not what read(2) returned */
	MSG_ERR_OPEN_SHORT, /* an OPEN with no room for struct cachefiles_open */
	MSG_ERR_KEYS,       /* the OPEN's key sizes do not add up to the bytes after it */
	MSG_ERR_READ_SIZE,  /* a READ whose payload is not one struct cachefiles_read */
	MSG_ERR_OPCODE,     /* an opcode this protocol does not have */
};

/* An OPEN: the keys point into the decoded buffer, which must outlive the struct. */
struct msg_open {
	const char *volume_key; /* not NUL-terminated: trailing NULs stripped, as protocol.py does */
	size_t volume_key_len;
	const uint8_t *cookie_key; /* binary, as the netfs made it */
	size_t cookie_key_len;
	uint32_t fd;
	uint32_t flags;
};

struct msg_read {
	uint64_t off;
	uint64_t len;
};

struct msg {
	enum msg_op op;
	uint32_t msg_id;
	uint32_t object_id;
	union {
		struct msg_open open; /* op == MSG_OPEN */
		struct msg_read read; /* op == MSG_READ */
	};
};

/* Longest error text msg_decode writes (with its NUL). */
#define MSG_WHY_MAX 96

/*
 * One message, as one read(2) of the device returned it (@n bytes, in the kernel's byte
 * order). MSG_OK fills @out; anything else leaves @out undefined and, if @why is not NULL,
 * writes the reason there (protocol.decode's wording), truncated to @why_size.
 */
enum msg_status msg_decode(const void *buf, size_t n, struct msg *out, char *why, size_t why_size);

/* "OPEN", "CLOSE", "READ" (or "?"). */
const char *msg_op_name(enum msg_op op);

/* Longest `copen` command msg_copen writes (with its NUL). */
#define MSG_COPEN_MAX 48

/*
 * `copen <msg_id>,<size_or_errno>` into @out (NUL-terminated): a size >= 0 opens the object,
 * a negative errno fails the OPEN. Returns the command's length (what to write(2), without the
 * NUL), or -1 for a value the kernel would not take as an errno (below -4095, as
 * protocol.copen_command refuses it) or an @out too small.
 */
int msg_copen(char *out, size_t out_size, uint32_t msg_id, int64_t size_or_errno);

/*
 * The blob a cookie asks for: EROFS's cookie key is the fsid (`<image>.<round>...`), trailing
 * NULs stripped (protocol.blob_name). Into @out, NUL-terminated. Returns 0, or -1 if the name
 * does not fit or holds a NUL of its own (no image is named that: the OPEN is refused).
 */
int msg_blob_name(const uint8_t *cookie_key, size_t len, char *out, size_t out_size);

/* How much of a blob name is its image: the part before the first '.' (daemon.py's blob()). */
size_t msg_image_len(const char *blob_name);

/* Whether an OPEN comes from EROFS: its volume key is `erofs,<domain or fsid>`. */
int msg_volume_is_erofs(const struct msg_open *open);

/*
 * The @align-aligned range that covers [off, off + len) (protocol.aligned_span): its start in
 * *@start and its length in *@span. Returns 0, or -1 if @align is 0 or the range does not fit
 * in 64 bits.
 */
int msg_aligned_span(uint64_t off, uint64_t len, uint64_t align, uint64_t *start, uint64_t *span);

#endif /* CDAEMON_MSG_H */
