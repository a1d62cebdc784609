/* cbridge: C99 reference of the firmware bridge protocol (firmware_bridge/PROTOCOL.md).
 *
 * No heap, no libc beyond <string.h>; every buffer is a fixed-size member of a state struct
 * sized by the protocol maxima. Sans-IO: the caller feeds received bytes and supplies
 * callbacks for writing bytes, reading a millisecond clock, running actions and "flash".
 */
#ifndef CBRIDGE_H
#define CBRIDGE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CB_PROTO_VERSION 1u
#define CB_HEADER_SIZE 6u
#define CB_CRC_SIZE 2u
#define CB_MIN_FRAME 8u
#define CB_MAX_PAYLOAD 244u
#define CB_MAX_FRAME 252u   /* header + payload + CRC */
#define CB_MAX_ENCODED 253u /* COBS adds exactly one byte to frames < 254 bytes */
#define CB_MAX_WIRE 254u    /* with the 0x00 delimiter */
#define CB_MAX_FW_CHUNK 200u

/* Timings (PROTOCOL.md sections 3 and 5), milliseconds. */
#define CB_RETRY_MS 500u
#define CB_MAX_TRANSMISSIONS 5u
#define CB_HELLO_MS 2000u
#define CB_HEARTBEAT_MS 5000u
#define CB_HOST_GONE_MS 15000u
#define CB_DEDUP_WINDOW 32u
#define CB_TXQ_LEN 2u /* NEEDS_ACK frames waiting behind the one in flight */

enum cb_flags { CB_FLAG_NEEDS_ACK = 0x01, CB_FLAG_RETRANSMIT = 0x02 };

enum cb_type {
    CB_HELLO = 0x01, CB_WELCOME = 0x02, CB_HEARTBEAT = 0x03, CB_ACK = 0x04, CB_NACK = 0x05,
    CB_DATA = 0x10, CB_EVENT = 0x11,
    CB_TIME_SYNC = 0x20, CB_CONFIG_GET = 0x21, CB_CONFIG_SET = 0x22, CB_CONFIG_VALUE = 0x23,
    CB_ACTION = 0x30, CB_ACTION_RESULT = 0x31,
    CB_FW_BEGIN = 0x40, CB_FW_CHUNK = 0x41, CB_FW_STATUS = 0x42, CB_FW_VERIFY = 0x43,
    CB_FW_COMMIT = 0x44, CB_FW_ABORT = 0x45
};

enum cb_nack {
    CB_NACK_CRC = 0x01, CB_NACK_UNSUPPORTED_TYPE = 0x02, CB_NACK_BAD_PAYLOAD = 0x03,
    CB_NACK_BUSY = 0x04, CB_NACK_VERSION = 0x05, CB_NACK_HELLO_REQUIRED = 0x06,
    CB_NACK_BAD_STATE = 0x07, CB_NACK_VERIFY_FAILED = 0x08, CB_NACK_UNKNOWN_KEY = 0x09,
    CB_NACK_UNKNOWN_ACTION = 0x0A, CB_NACK_TOO_LARGE = 0x0B
};

enum cb_fw_state {
    CB_FW_IDLE = 0, CB_FW_RECEIVING = 1, CB_FW_VERIFIED = 2, CB_FW_COMMITTED = 3,
    CB_FW_ROLLED_BACK = 4
};

enum cb_action_status { CB_ACTION_OK = 0, CB_ACTION_FAILED = 1, CB_ACTION_REJECTED = 2,
                        CB_ACTION_TIMEOUT = 3 };

/* Value tags (4.1). A bool is tag 0 (false) or 1 (true). */
enum cb_tag {
    CB_TAG_FALSE = 0, CB_TAG_TRUE = 1, CB_TAG_INT8 = 2, CB_TAG_INT16 = 3, CB_TAG_INT32 = 4,
    CB_TAG_FLOAT32 = 5, CB_TAG_UINT32 = 6, CB_TAG_STRING = 7
};

/* ------------------------------------------------------------------ wire layer */

uint16_t cb_crc16(const uint8_t *data, size_t len, uint16_t crc); /* start with 0xFFFF */

/* Canonical COBS (0xFF blocks included). Returns the encoded length (no delimiter) or 0 if
 * out_cap is too small. */
size_t cb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t out_cap);
/* Returns the decoded length, or -1 on a COBS error (code 0x00, code past the end) or if
 * out_cap is too small. out may equal in (decoding in place is safe). */
int cb_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t out_cap);

/* A frame; payload points into someone else's buffer (the decoder's, or the caller's). */
typedef struct {
    uint8_t version;
    uint8_t type;
    uint8_t flags;
    uint16_t seq;
    uint8_t len;
    const uint8_t *payload;
} cb_frame_t;

/* Header + payload + CRC -> COBS -> 0x00 into out. Returns the wire length (len + 10) or 0
 * if len > CB_MAX_PAYLOAD or out_cap < len + 10. out must not overlap the payload. */
size_t cb_encode_frame(const cb_frame_t *frame, uint8_t *out, size_t out_cap);

/* Result of checking a COBS-decoded frame, in the order of PROTOCOL.md 1.4. */
typedef enum {
    CB_OK = 0, CB_ERR_TOO_LONG, CB_ERR_COBS, CB_ERR_TOO_SHORT, CB_ERR_CRC, CB_ERR_LENGTH
} cb_result_t;

/* Check a decoded frame (raw bytes, CRC included) and fill frame (payload points into raw). */
cb_result_t cb_parse_frame(const uint8_t *raw, size_t len, cb_frame_t *frame);

typedef struct {
    uint32_t frames;
    uint32_t cobs_errors;
    uint32_t too_short;
    uint32_t too_long;
    uint32_t crc_errors;
    uint32_t length_errors;
    uint32_t discarded_bytes;
} cb_stats_t;

typedef struct {
    uint8_t buf[CB_MAX_ENCODED]; /* collected bytes, decoded in place at the delimiter */
    uint16_t len;
    uint32_t skipped; /* bytes past CB_MAX_ENCODED; > 0 means "too long, skip to 0x00" */
    cb_stats_t stats;
    cb_frame_t frame; /* the last good frame; valid until the next cb_decoder_feed() */
} cb_decoder_t;

void cb_decoder_init(cb_decoder_t *dec);
/* Feed one received byte; returns true when dec->frame holds a complete valid frame. */
bool cb_decoder_feed(cb_decoder_t *dec, uint8_t byte);

/* ------------------------------------------------------------------ payloads */

typedef struct {
    uint8_t tag; /* enum cb_tag */
    union {
        int32_t i;  /* INT8, INT16, INT32 */
        uint32_t u; /* UINT32 */
        float f;    /* FLOAT32 */
        struct {
            const uint8_t *ptr; /* UTF-8, not terminated */
            uint8_t len;
        } s;
    } v;
} cb_value_t;

cb_value_t cb_value_bool(bool b);
cb_value_t cb_value_int8(int8_t x);
cb_value_t cb_value_int16(int16_t x);
cb_value_t cb_value_int32(int32_t x);
cb_value_t cb_value_uint32(uint32_t x);
cb_value_t cb_value_float32(float x);
cb_value_t cb_value_string(const char *s); /* truncated to 255 bytes */

/* Payload writer: every write past cap sets err and writes nothing more. */
typedef struct {
    uint8_t *buf;
    size_t cap;
    size_t len;
    bool err;
} cb_writer_t;

void cb_writer_init(cb_writer_t *w, uint8_t *buf, size_t cap);
void cb_w_u8(cb_writer_t *w, uint8_t x);
void cb_w_u16(cb_writer_t *w, uint16_t x);
void cb_w_u32(cb_writer_t *w, uint32_t x);
void cb_w_u64(cb_writer_t *w, uint64_t x);
void cb_w_bytes(cb_writer_t *w, const uint8_t *p, size_t n);
void cb_w_str(cb_writer_t *w, const uint8_t *s, size_t n); /* n > 255 sets err */
void cb_w_value(cb_writer_t *w, const cb_value_t *v);
/* Points: cb_w_u8(w, count) then count x cb_w_point(). */
void cb_w_point(cb_writer_t *w, uint8_t id, const cb_value_t *v);

/* Payload reader: any short read, bad tag or bad UTF-8 sets err (-> NACK BAD_PAYLOAD). */
typedef struct {
    const uint8_t *buf;
    size_t len;
    size_t pos;
    bool err;
} cb_reader_t;

void cb_reader_init(cb_reader_t *r, const uint8_t *buf, size_t len);
uint8_t cb_r_u8(cb_reader_t *r);
uint16_t cb_r_u16(cb_reader_t *r);
uint32_t cb_r_u32(cb_reader_t *r);
uint64_t cb_r_u64(cb_reader_t *r);
const uint8_t *cb_r_bytes(cb_reader_t *r, size_t n); /* NULL on error */
bool cb_r_str(cb_reader_t *r, const uint8_t **s, uint8_t *n);
bool cb_r_value(cb_reader_t *r, cb_value_t *v);
bool cb_r_end(cb_reader_t *r); /* true when no error and every byte was consumed */
bool cb_utf8_valid(const uint8_t *s, size_t n);

/* 0 if the payload parses exactly for its type (section 4), else the NACK reason:
 * CB_NACK_UNSUPPORTED_TYPE for an unassigned type, CB_NACK_BAD_PAYLOAD otherwise. */
uint8_t cb_check_payload(uint8_t type, const uint8_t *payload, size_t len);
/* true for EVENT, CONFIG_SET, ACTION, ACTION_RESULT. */
bool cb_type_needs_ack(uint8_t type);

/* ------------------------------------------------------------------ SHA-256 */

typedef struct {
    uint32_t h[8];
    uint64_t total;
    uint8_t block[64];
    uint8_t used;
} cb_sha256_t;

void cb_sha256_init(cb_sha256_t *s);
void cb_sha256_update(cb_sha256_t *s, const uint8_t *data, size_t len);
void cb_sha256_final(cb_sha256_t *s, uint8_t out[32]);

/* ------------------------------------------------------------------ node */

typedef enum { CB_FLASH_ERASE, CB_FLASH_WRITE, CB_FLASH_COMMIT, CB_FLASH_ABORT } cb_flash_op_t;

typedef enum {
    CB_NODE_WELCOMED,        /* arg = unix_ms from WELCOME */
    CB_NODE_TIME,            /* arg = unix_ms from TIME_SYNC */
    CB_NODE_HOST_LOST,       /* 15 s of silence or HELLO_REQUIRED: back to HELLO */
    CB_NODE_DELIVERED,       /* arg = seq | type << 16 of the EVENT/ACTION_RESULT ACKed */
    CB_NODE_UNDELIVERED,     /* arg = seq | type << 16, given up (5 transmissions, NACK) */
    CB_NODE_FW_COMMITTED     /* the node should reboot into the new image now */
} cb_node_event_t;

typedef struct {
    void *ctx;
    /* required */
    void (*write)(void *ctx, const uint8_t *data, size_t len);
    uint32_t (*now_ms)(void *ctx);
    /* ACTION(action_id, argc values in args[0..args_len)), already validated as values.
     * Return 0 to accept it (the node ACKs and then sends ACTION_RESULT(*status, msg)), or a
     * NACK reason (CB_NACK_UNKNOWN_ACTION, CB_NACK_BAD_PAYLOAD, CB_NACK_BUSY). NULL: every
     * action is UNKNOWN_ACTION. msg is a buffer of msg_cap bytes, NUL-terminated by you. */
    uint8_t (*on_action)(void *ctx, uint8_t action_id, uint8_t argc, const uint8_t *args,
                         size_t args_len, uint8_t *status, char *msg, size_t msg_cap);
    /* Update slot: ERASE(offset=0, len=image size), WRITE(offset, data, len), COMMIT, ABORT.
     * Return 0 on success; a failed ERASE/WRITE is answered NACK BUSY. NULL: no updates. */
    int (*flash)(void *ctx, cb_flash_op_t op, uint32_t offset, const uint8_t *data, size_t len);
    void (*on_event)(void *ctx, cb_node_event_t ev, uint64_t arg); /* optional */
    /* identity */
    uint8_t uid[8];
    const char *model;
    const char *fw_version;
    uint32_t fw_slot_size;
} cb_node_config_t;

typedef struct {
    uint8_t type;
    uint8_t len;
    uint8_t payload[CB_MAX_PAYLOAD];
} cb_pending_t;

#define CB_ACTION_MSG_MAX 48u

typedef struct {
    cb_node_config_t cfg;
    cb_decoder_t dec;
    uint8_t tx[CB_MAX_WIRE]; /* scratch for the frame being written */
    bool online;
    uint8_t version; /* negotiated */
    uint16_t seq;    /* next seq to send */
    uint32_t last_tx, last_rx, last_hello;
    bool hello_sent;
    uint64_t unix_ms_at_sync;
    uint32_t ms_at_sync;
    /* stop-and-wait: one NEEDS_ACK frame in flight, CB_TXQ_LEN waiting */
    bool inflight_active;
    uint8_t inflight_tx_count;
    uint16_t inflight_seq;
    uint32_t inflight_last_tx;
    cb_pending_t inflight;
    cb_pending_t queue[CB_TXQ_LEN];
    uint8_t q_head, q_count;
    uint32_t undelivered;
    bool hold_queue; /* an EVENT was given up on: queue waits for the next WELCOME */
    /* de-duplication window of host NEEDS_ACK seqs */
    uint16_t dedup[CB_DEDUP_WINDOW];
    uint8_t dedup_count, dedup_next;
    /* firmware update */
    uint8_t fw_state;
    uint32_t fw_size, fw_next;
    uint8_t fw_sha[32];
    cb_sha256_t fw_hash; /* of bytes [0, fw_next) */
} cb_node_t;

void cb_node_init(cb_node_t *node, const cb_node_config_t *cfg);
/* Feed one received byte (frames are handled, answers written, as they complete). */
void cb_node_feed(cb_node_t *node, uint8_t byte);
/* Call often (every few ms): HELLO every 2 s, heartbeat, retransmission, host-gone. */
void cb_node_poll(cb_node_t *node);
bool cb_node_online(const cb_node_t *node);
/* DATA now (dropped when not online; returns false then). payload = points. */
bool cb_node_send_data(cb_node_t *node, const uint8_t *points, size_t len);
/* EVENT: queued, sent with NEEDS_ACK and retransmitted until ACKed; false if queue full. */
bool cb_node_send_event(cb_node_t *node, const uint8_t *points, size_t len);
/* Unix time in ms from WELCOME/TIME_SYNC and the local clock; 0 if never set. */
uint64_t cb_node_unix_ms(const cb_node_t *node);

#endif
