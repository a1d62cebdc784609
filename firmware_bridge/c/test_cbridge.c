/* Unit tests of cbridge (no framework). Last line: "N passed, N failed".
 *
 *   test_cbridge                  run every test
 *   test_cbridge --stream SEED [OUT]
 *                                 feed the pseudo-random stream SEED to a decoder byte by byte,
 *                                 print one JSON line (counters + frames), write it to OUT
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cbridge.h"

typedef struct {
    uint8_t version, type, flags;
    uint16_t seq;
    const uint8_t *payload;
    size_t len;
} vec_frame_t;

typedef struct {
    uint8_t id, tag;
    int32_t i;
    uint32_t u; /* uint32 value, or float32 bits */
    const char *s;
    size_t slen;
} vec_point_t;

typedef struct {
    const char *name;
    int bad;
    const uint8_t *wire;
    size_t wire_len;
    const vec_frame_t *frames;
    size_t nframes;
    uint32_t counters[7];
    uint8_t nack;
    int has_points;
    const vec_point_t *points;
    size_t npoints;
} vector_t;

#include "vectors_gen.h"

static int passed, failed;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (cond) {                                                                            \
            passed++;                                                                          \
        } else {                                                                               \
            failed++;                                                                          \
            printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                             \
            printf(__VA_ARGS__);                                                               \
            printf("\n");                                                                      \
        }                                                                                      \
    } while (0)

static void stats_array(const cb_stats_t *s, uint32_t out[7])
{
    out[0] = s->frames; out[1] = s->cobs_errors; out[2] = s->too_short; out[3] = s->too_long;
    out[4] = s->crc_errors; out[5] = s->length_errors; out[6] = s->discarded_bytes;
}

/* ------------------------------------------------------------------ wire */

static void test_crc(void)
{
    CHECK(cb_crc16((const uint8_t *)"123456789", 9, 0xFFFF) == 0x29B1, "check value");
    CHECK(cb_crc16(NULL, 0, 0xFFFF) == 0xFFFF, "empty");
}

static void cobs_case(const char *name, const uint8_t *in, size_t n, const uint8_t *enc, size_t m)
{
    uint8_t out[600], back[600];
    size_t e = cb_cobs_encode(in, n, out, sizeof out);
    CHECK(e == m && memcmp(out, enc, m) == 0, "%s encode (%zu vs %zu)", name, e, m);
    int d = cb_cobs_decode(enc, m, back, sizeof back);
    CHECK(d == (int)n && (n == 0 || memcmp(back, in, n) == 0), "%s decode (%d)", name, d);
}

static void test_cobs(void)
{
    static const uint8_t a[] = {0x00}, ae[] = {0x01, 0x01};
    static const uint8_t b[] = {0x00, 0x00}, be[] = {0x01, 0x01, 0x01};
    static const uint8_t c[] = {0x00, 0x11, 0x00}, ce[] = {0x01, 0x02, 0x11, 0x01};
    static const uint8_t d[] = {0x11, 0x22, 0x00, 0x33}, de[] = {0x03, 0x11, 0x22, 0x02, 0x33};
    static const uint8_t e[] = {0x11, 0x22, 0x33, 0x44}, ee[] = {0x05, 0x11, 0x22, 0x33, 0x44};
    static const uint8_t f[] = {0x11, 0x00, 0x00, 0x00}, fe[] = {0x02, 0x11, 0x01, 0x01, 0x01};
    static const uint8_t ze[] = {0x01};
    uint8_t big[300], enc[310];
    size_t k;
    cobs_case("empty", NULL, 0, ze, 1);
    cobs_case("00", a, sizeof a, ae, sizeof ae);
    cobs_case("00 00", b, sizeof b, be, sizeof be);
    cobs_case("00 11 00", c, sizeof c, ce, sizeof ce);
    cobs_case("11 22 00 33", d, sizeof d, de, sizeof de);
    cobs_case("11 22 33 44", e, sizeof e, ee, sizeof ee);
    cobs_case("11 00 00 00", f, sizeof f, fe, sizeof fe);
    /* 01..FE (254 bytes): FF 01..FE, no trailing code (canonical) */
    for (k = 0; k < 254; k++) big[k] = (uint8_t)(k + 1);
    enc[0] = 0xFF; memcpy(enc + 1, big, 254);
    cobs_case("01..FE", big, 254, enc, 255);
    /* 00..FE (255 bytes): 01 FF 01..FE */
    big[0] = 0; for (k = 1; k < 255; k++) big[k] = (uint8_t)k;
    enc[0] = 0x01; enc[1] = 0xFF; for (k = 1; k < 255; k++) enc[k + 1] = (uint8_t)k;
    cobs_case("00..FE", big, 255, enc, 256);
    /* 01..FF (255 bytes): FF 01..FE 02 FF */
    for (k = 0; k < 255; k++) big[k] = (uint8_t)(k + 1);
    enc[0] = 0xFF; for (k = 0; k < 254; k++) enc[k + 1] = (uint8_t)(k + 1);
    enc[255] = 0x02; enc[256] = 0xFF;
    cobs_case("01..FF", big, 255, enc, 257);
    /* errors */
    static const uint8_t z[] = {0x02, 0x11, 0x00}, past[] = {0x05, 0x11, 0x22};
    uint8_t out[8];
    CHECK(cb_cobs_decode(z, sizeof z, out, sizeof out) < 0, "0x00 code");
    CHECK(cb_cobs_decode(past, sizeof past, out, sizeof out) < 0, "code past end");
    CHECK(cb_cobs_encode(e, sizeof e, out, 3) == 0, "encode overflow");
}

static int frame_eq(const cb_frame_t *f, const vec_frame_t *v)
{
    return f->version == v->version && f->type == v->type && f->flags == v->flags &&
           f->seq == v->seq && f->len == v->len && memcmp(f->payload, v->payload, v->len) == 0;
}

/* Parse a payload with the readers and write it again with the writers (typed round trip). */
static size_t reencode(uint8_t type, const uint8_t *p, size_t n, uint8_t *out, size_t cap)
{
    cb_reader_t r;
    cb_writer_t w;
    cb_value_t v;
    const uint8_t *s;
    uint8_t sl, count;
    cb_reader_init(&r, p, n);
    cb_writer_init(&w, out, cap);
    switch (type) {
    case CB_HELLO:
        cb_w_u8(&w, cb_r_u8(&r)); cb_w_u8(&w, cb_r_u8(&r));
        s = cb_r_bytes(&r, 8); if (s) cb_w_bytes(&w, s, 8);
        if (cb_r_str(&r, &s, &sl)) cb_w_str(&w, s, sl);
        if (cb_r_str(&r, &s, &sl)) cb_w_str(&w, s, sl);
        break;
    case CB_WELCOME: cb_w_u8(&w, cb_r_u8(&r)); cb_w_u64(&w, cb_r_u64(&r)); break;
    case CB_ACK: cb_w_u16(&w, cb_r_u16(&r)); break;
    case CB_NACK: cb_w_u16(&w, cb_r_u16(&r)); cb_w_u8(&w, cb_r_u8(&r)); break;
    case CB_DATA:
    case CB_EVENT:
        count = cb_r_u8(&r); cb_w_u8(&w, count);
        for (unsigned i = 0; i < count && !r.err; i++) {
            uint8_t id = cb_r_u8(&r);
            if (cb_r_value(&r, &v)) cb_w_point(&w, id, &v);
        }
        break;
    case CB_TIME_SYNC: cb_w_u64(&w, cb_r_u64(&r)); break;
    case CB_CONFIG_GET: cb_w_u8(&w, cb_r_u8(&r)); break;
    case CB_CONFIG_SET:
    case CB_CONFIG_VALUE:
        cb_w_u8(&w, cb_r_u8(&r)); if (cb_r_value(&r, &v)) cb_w_value(&w, &v); break;
    case CB_ACTION:
        cb_w_u8(&w, cb_r_u8(&r)); count = cb_r_u8(&r); cb_w_u8(&w, count);
        for (unsigned i = 0; i < count && !r.err; i++)
            if (cb_r_value(&r, &v)) cb_w_value(&w, &v);
        break;
    case CB_ACTION_RESULT:
        cb_w_u16(&w, cb_r_u16(&r)); cb_w_u8(&w, cb_r_u8(&r));
        if (cb_r_str(&r, &s, &sl)) cb_w_str(&w, s, sl);
        break;
    case CB_FW_BEGIN:
        cb_w_u32(&w, cb_r_u32(&r)); s = cb_r_bytes(&r, 32); if (s) cb_w_bytes(&w, s, 32);
        if (cb_r_str(&r, &s, &sl)) cb_w_str(&w, s, sl);
        break;
    case CB_FW_CHUNK:
        cb_w_u32(&w, cb_r_u32(&r));
        s = cb_r_bytes(&r, n - r.pos); if (s) cb_w_bytes(&w, s, n - 4);
        break;
    case CB_FW_STATUS: cb_w_u8(&w, cb_r_u8(&r)); cb_w_u32(&w, cb_r_u32(&r)); break;
    default: break;
    }
    return (cb_r_end(&r) && !w.err) ? w.len : (size_t)-1;
}

static void check_points(const vector_t *v, const cb_frame_t *f)
{
    cb_reader_t r;
    cb_value_t val;
    cb_reader_init(&r, f->payload, f->len);
    uint8_t count = cb_r_u8(&r);
    CHECK(count == v->npoints, "%s: %u points", v->name, count);
    for (size_t i = 0; i < v->npoints && i < count; i++) {
        const vec_point_t *e = &v->points[i];
        uint8_t id = cb_r_u8(&r);
        int ok = cb_r_value(&r, &val) && id == e->id && val.tag == e->tag;
        uint32_t bits = 0;
        if (ok) {
            switch (val.tag) {
            case CB_TAG_INT8: case CB_TAG_INT16: case CB_TAG_INT32: ok = val.v.i == e->i; break;
            case CB_TAG_UINT32: ok = val.v.u == e->u; break;
            case CB_TAG_FLOAT32: memcpy(&bits, &val.v.f, 4); ok = bits == e->u; break;
            case CB_TAG_STRING:
                ok = val.v.s.len == e->slen && memcmp(val.v.s.ptr, e->s, e->slen) == 0; break;
            default: break;
            }
        }
        CHECK(ok, "%s: point %zu", v->name, i);
    }
    CHECK(cb_r_end(&r), "%s: points consumed", v->name);
}

static void test_vectors(void)
{
    for (size_t k = 0; k < N_VECTORS; k++) {
        const vector_t *v = &VECTORS[k];
        cb_decoder_t dec;
        size_t got = 0;
        uint32_t c[7];
        int frames_ok = 1;
        cb_decoder_init(&dec);
        for (size_t i = 0; i < v->wire_len; i++) {
            if (!cb_decoder_feed(&dec, v->wire[i]))
                continue;
            const cb_frame_t *f = &dec.frame;
            if (got >= v->nframes || !frame_eq(f, &v->frames[got])) {
                frames_ok = 0;
            } else if (!v->bad) {
                /* decode -> re-encode, byte for byte */
                uint8_t wire[CB_MAX_WIRE], pay[CB_MAX_PAYLOAD];
                size_t n = cb_encode_frame(f, wire, sizeof wire);
                CHECK(n == v->wire_len && memcmp(wire, v->wire, n) == 0, "%s: re-encode", v->name);
                uint8_t nack = cb_check_payload(f->type, f->payload, f->len);
                CHECK(nack == v->nack, "%s: payload check %u, expected %u", v->name, nack, v->nack);
                if (!nack) {
                    size_t m = reencode(f->type, f->payload, f->len, pay, sizeof pay);
                    CHECK(m == f->len && memcmp(pay, f->payload, m) == 0, "%s: typed round trip",
                          v->name);
                }
                if (v->has_points)
                    check_points(v, f);
            }
            got++;
        }
        CHECK(frames_ok && got == v->nframes, "%s: frames (%zu of %zu)", v->name, got, v->nframes);
        stats_array(&dec.stats, c);
        CHECK(memcmp(c, v->counters, sizeof c) == 0,
              "%s: counters %u %u %u %u %u %u %u", v->name, c[0], c[1], c[2], c[3], c[4], c[5], c[6]);
        CHECK(dec.len == 0 && dec.skipped == 0, "%s: decoder idle at the end", v->name);
        if (!v->bad) { /* encode the vector's frame to exactly wire_hex */
            const vec_frame_t *e = &v->frames[0];
            cb_frame_t f = {e->version, e->type, e->flags, e->seq, (uint8_t)e->len, e->payload};
            uint8_t wire[CB_MAX_WIRE];
            size_t n = cb_encode_frame(&f, wire, sizeof wire);
            CHECK(n == v->wire_len && memcmp(wire, v->wire, n) == 0, "%s: encode", v->name);
            CHECK(n == e->len + 10u, "%s: wire = payload + 10", v->name);
        }
    }
}

static void test_values(void)
{
    uint8_t buf[CB_MAX_PAYLOAD];
    cb_writer_t w;
    cb_reader_t r;
    cb_value_t v;
    cb_value_t in[] = {cb_value_bool(true), cb_value_bool(false), cb_value_int8(-128),
                       cb_value_int16(-32768), cb_value_int32(INT32_MIN), cb_value_uint32(UINT32_MAX),
                       cb_value_float32(21.5f), cb_value_string("h\xc3\xa9")};
    cb_writer_init(&w, buf, sizeof buf);
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++)
        cb_w_value(&w, &in[i]);
    CHECK(!w.err && w.len == 1 + 1 + 2 + 3 + 5 + 5 + 5 + 5, "written %zu", w.len);
    cb_reader_init(&r, buf, w.len);
    for (size_t i = 0; i < sizeof in / sizeof in[0]; i++) {
        CHECK(cb_r_value(&r, &v) && v.tag == in[i].tag, "value %zu", i);
    }
    CHECK(cb_r_end(&r), "consumed");
    /* int16 LE and sign */
    static const uint8_t i16[] = {0x03, 0x18, 0xfc};
    cb_reader_init(&r, i16, 3);
    CHECK(cb_r_value(&r, &v) && v.v.i == -1000, "int16 -1000");
    /* bad payloads */
    static const uint8_t tag8[] = {0x01, 0x00, 0x08};
    static const uint8_t badutf[] = {0x01, 0x00, 0x07, 0x02, 0xc0, 0x80};
    static const uint8_t surrogate[] = {0x01, 0x00, 0x07, 0x03, 0xed, 0xa0, 0x80};
    static const uint8_t shortp[] = {0x02, 0x00, 0x03, 0x01};
    static const uint8_t extra[] = {0x00, 0x00};
    CHECK(cb_check_payload(CB_DATA, tag8, sizeof tag8) == CB_NACK_BAD_PAYLOAD, "tag 8");
    CHECK(cb_check_payload(CB_DATA, badutf, sizeof badutf) == CB_NACK_BAD_PAYLOAD, "overlong");
    CHECK(cb_check_payload(CB_DATA, surrogate, sizeof surrogate) == CB_NACK_BAD_PAYLOAD, "surr.");
    CHECK(cb_check_payload(CB_DATA, shortp, sizeof shortp) == CB_NACK_BAD_PAYLOAD, "short");
    CHECK(cb_check_payload(CB_DATA, extra, sizeof extra) == CB_NACK_BAD_PAYLOAD, "extra");
    CHECK(cb_check_payload(0x7f, extra, 0) == CB_NACK_UNSUPPORTED_TYPE, "unknown type");
    uint8_t chunk[205] = {0};
    CHECK(cb_check_payload(CB_FW_CHUNK, chunk, 204) == 0, "chunk 200");
    CHECK(cb_check_payload(CB_FW_CHUNK, chunk, 205) == CB_NACK_BAD_PAYLOAD, "chunk 201");
    CHECK(cb_check_payload(CB_FW_CHUNK, chunk, 3) == CB_NACK_BAD_PAYLOAD, "chunk short");
    CHECK(cb_utf8_valid((const uint8_t *)"\xf0\x9f\x98\x80", 4), "emoji");
    CHECK(!cb_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4), "> U+10FFFF");
    /* frame encoder refuses a payload over 244 bytes and a small buffer */
    cb_frame_t f = {1, CB_DATA, 0, 0, 245, buf};
    uint8_t wire[300];
    CHECK(cb_encode_frame(&f, wire, sizeof wire) == 0, "payload 245");
    f.len = 244;
    CHECK(cb_encode_frame(&f, wire, 253) == 0 && cb_encode_frame(&f, wire, 254) == 254, "cap");
}

static void test_sha256(void)
{
    static const uint8_t abc[32] = {
        0xba, 0x78, 0x16, 0xbf, 0x8f, 0x01, 0xcf, 0xea, 0x41, 0x41, 0x40, 0xde, 0x5d, 0xae, 0x22, 0x23,
        0xb0, 0x03, 0x61, 0xa3, 0x96, 0x17, 0x7a, 0x9c, 0xb4, 0x10, 0xff, 0x61, 0xf2, 0x00, 0x15, 0xad};
    static const uint8_t two[32] = { /* "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq" */
        0x24, 0x8d, 0x6a, 0x61, 0xd2, 0x06, 0x38, 0xb8, 0xe5, 0xc0, 0x26, 0x93, 0x0c, 0x3e, 0x60, 0x39,
        0xa3, 0x3c, 0xe4, 0x59, 0x64, 0xff, 0x21, 0x67, 0xf6, 0xec, 0xed, 0xd4, 0x19, 0xdb, 0x06, 0xc1};
    const char *m2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
    cb_sha256_t s;
    uint8_t d[32];
    cb_sha256_init(&s);
    cb_sha256_update(&s, (const uint8_t *)"abc", 3);
    cb_sha256_final(&s, d);
    CHECK(memcmp(d, abc, 32) == 0, "sha256(abc)");
    cb_sha256_init(&s);
    for (size_t i = 0; i < strlen(m2); i++) /* byte by byte across the block boundary */
        cb_sha256_update(&s, (const uint8_t *)m2 + i, 1);
    cb_sha256_final(&s, d);
    CHECK(memcmp(d, two, 32) == 0, "sha256(two blocks)");
}

/* ------------------------------------------------------------------ node */

#define MAX_SEEN 64
static struct {
    uint32_t now;
    cb_decoder_t host; /* decodes what the node writes */
    struct { uint8_t type, flags; uint16_t seq; uint8_t len; uint8_t payload[CB_MAX_PAYLOAD]; } seen[MAX_SEEN];
    int nseen;
    uint8_t flash[4096];
    int committed, actions;
    uint16_t host_seq;
} H;

static void h_write(void *ctx, const uint8_t *data, size_t len)
{
    (void)ctx;
    for (size_t i = 0; i < len; i++) {
        if (cb_decoder_feed(&H.host, data[i]) && H.nseen < MAX_SEEN) {
            const cb_frame_t *f = &H.host.frame;
            H.seen[H.nseen].type = f->type; H.seen[H.nseen].flags = f->flags;
            H.seen[H.nseen].seq = f->seq; H.seen[H.nseen].len = f->len;
            memcpy(H.seen[H.nseen].payload, f->payload, f->len);
            H.nseen++;
        }
    }
}
static uint32_t h_now(void *ctx) { (void)ctx; return H.now; }
static uint8_t h_action(void *ctx, uint8_t id, uint8_t argc, const uint8_t *args, size_t n,
                        uint8_t *status, char *msg, size_t cap)
{
    (void)ctx; (void)argc; (void)args; (void)n;
    if (id != 0) return CB_NACK_UNKNOWN_ACTION;
    H.actions++;
    *status = CB_ACTION_OK;
    snprintf(msg, cap, "door toggled");
    return 0;
}
static int h_flash(void *ctx, cb_flash_op_t op, uint32_t off, const uint8_t *d, size_t n)
{
    (void)ctx;
    if (op == CB_FLASH_ERASE) { if (n > sizeof H.flash) return -1; memset(H.flash, 0xFF, sizeof H.flash); }
    if (op == CB_FLASH_WRITE) { if (off + n > sizeof H.flash) return -1; memcpy(H.flash + off, d, n); }
    if (op == CB_FLASH_COMMIT) H.committed = 1;
    return 0;
}

static void host_send(cb_node_t *node, uint8_t type, uint8_t flags, uint16_t seq,
                      const uint8_t *p, size_t n)
{
    cb_frame_t f = {1, type, flags, seq, (uint8_t)n, p};
    uint8_t wire[CB_MAX_WIRE];
    size_t w = cb_encode_frame(&f, wire, sizeof wire);
    for (size_t i = 0; i < w; i++)
        cb_node_feed(node, wire[i]);
}

static int last_is(uint8_t type) { return H.nseen > 0 && H.seen[H.nseen - 1].type == type; }
static uint16_t le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static void advance(cb_node_t *node, uint32_t ms)
{
    for (uint32_t t = 0; t < ms; t += 10) { H.now += 10; cb_node_poll(node); }
}

static int fw_status(uint8_t state, uint32_t next)
{
    return last_is(CB_FW_STATUS) && H.seen[H.nseen - 1].payload[0] == state &&
           le32(H.seen[H.nseen - 1].payload + 1) == next;
}
static int nacked(uint8_t reason)
{
    return last_is(CB_NACK) && H.seen[H.nseen - 1].payload[2] == reason;
}

static void test_node(void)
{
    static cb_node_t node; /* static: it is what a firmware would do, too */
    cb_node_config_t cfg;
    memset(&H, 0, sizeof H);
    memset(&cfg, 0, sizeof cfg);
    cb_decoder_init(&H.host);
    H.now = 1000;
    cfg.write = h_write; cfg.now_ms = h_now; cfg.on_action = h_action; cfg.flash = h_flash;
    memcpy(cfg.uid, "\x01\x02\x03\x04\x05\x06\x07\x08", 8);
    cfg.model = "test-node"; cfg.fw_version = "1.0.0"; cfg.fw_slot_size = sizeof H.flash;
    cb_node_init(&node, &cfg);

    cb_node_poll(&node);
    CHECK(H.nseen == 1 && H.seen[0].type == CB_HELLO && H.seen[0].seq == 0, "HELLO first");
    CHECK(cb_check_payload(CB_HELLO, H.seen[0].payload, H.seen[0].len) == 0, "HELLO parses");
    advance(&node, 1990);
    CHECK(H.nseen == 1, "no HELLO before 2 s");
    advance(&node, 10);
    CHECK(H.nseen == 2 && H.seen[1].type == CB_HELLO && H.seen[1].seq == 1, "HELLO again at 2 s");
    /* frames before WELCOME are ignored */
    host_send(&node, CB_HEARTBEAT, 0, 100, NULL, 0);
    host_send(&node, 0x7f, 0, 101, NULL, 0);
    CHECK(H.nseen == 2 && !cb_node_online(&node), "ignored before WELCOME");
    /* WELCOME with an unsupported version: NACK VERSION */
    uint8_t wel[9] = {2, 0x00, 0x10, 0x20, 0x30, 0x40, 0x50, 0, 0};
    host_send(&node, CB_WELCOME, 0, 102, wel, 9);
    CHECK(nacked(CB_NACK_VERSION) && !cb_node_online(&node), "WELCOME v2 refused");
    wel[0] = 1;
    host_send(&node, CB_WELCOME, 0, 103, wel, 9);
    CHECK(cb_node_online(&node), "online after WELCOME");
    CHECK(cb_node_unix_ms(&node) == 0x504030201000ull, "time from WELCOME");

    /* unknown type -> NACK UNSUPPORTED_TYPE; bad payload -> BAD_PAYLOAD; ACK not answered */
    int before = H.nseen;
    host_send(&node, 0x7f, 0, 20, (const uint8_t *)"\x01\x02", 2);
    CHECK(nacked(CB_NACK_UNSUPPORTED_TYPE) && le16(H.seen[H.nseen - 1].payload) == 20, "NACK 0x7f");
    host_send(&node, CB_TIME_SYNC, 0, 21, (const uint8_t *)"\x01", 1);
    CHECK(nacked(CB_NACK_BAD_PAYLOAD), "bad TIME_SYNC");
    host_send(&node, CB_ACK, 0, 22, (const uint8_t *)"\x99\x99", 2);
    host_send(&node, CB_NACK, 0, 23, (const uint8_t *)"\x99", 1);
    CHECK(H.nseen == before + 2, "ACK/NACK never answered");
    /* frame with another header version: NACK VERSION */
    {
        cb_frame_t f = {2, CB_HEARTBEAT, 0, 24, 0, NULL};
        uint8_t wire[16];
        size_t w = cb_encode_frame(&f, wire, sizeof wire);
        for (size_t i = 0; i < w; i++) cb_node_feed(&node, wire[i]);
        CHECK(nacked(CB_NACK_VERSION), "version 2 frame");
    }

    /* heartbeat after 5 s without sending */
    before = H.nseen;
    host_send(&node, CB_HEARTBEAT, 0, 25, NULL, 0);
    advance(&node, 4900);
    CHECK(H.nseen == before, "no heartbeat yet");
    advance(&node, 200);
    CHECK(H.nseen == before + 1 && last_is(CB_HEARTBEAT), "heartbeat at 5 s");

    /* EVENT: NEEDS_ACK, retransmitted every 500 ms with RETRANSMIT, then ACK stops it */
    uint8_t ev[3] = {1, 2, CB_TAG_TRUE};
    host_send(&node, CB_HEARTBEAT, 0, 26, NULL, 0);
    before = H.nseen;
    CHECK(cb_node_send_event(&node, ev, 3), "event queued");
    CHECK(H.nseen == before + 1 && last_is(CB_EVENT) && H.seen[H.nseen - 1].flags == CB_FLAG_NEEDS_ACK,
          "EVENT sent");
    uint16_t ev_seq = H.seen[H.nseen - 1].seq;
    advance(&node, 500);
    CHECK(H.nseen == before + 2 && last_is(CB_EVENT) && H.seen[H.nseen - 1].seq == ev_seq &&
          H.seen[H.nseen - 1].flags == (CB_FLAG_NEEDS_ACK | CB_FLAG_RETRANSMIT), "retransmit");
    uint8_t ack[2] = {(uint8_t)ev_seq, (uint8_t)(ev_seq >> 8)};
    host_send(&node, CB_ACK, 0, 27, ack, 2);
    advance(&node, 1000);
    CHECK(H.nseen == before + 2 && !node.inflight_active, "ACK ends it");

    /* EVENT never ACKed: 5 transmissions, then held until the next WELCOME */
    before = H.nseen;
    cb_node_send_event(&node, ev, 3);
    for (int i = 0; i < 6; i++) {
        host_send(&node, CB_HEARTBEAT, 0, (uint16_t)(30 + i), NULL, 0); /* keep the host alive */
        advance(&node, 500);
    }
    int evs = 0;
    for (int i = before; i < H.nseen; i++) evs += H.seen[i].type == CB_EVENT;
    CHECK(evs == 5 && node.undelivered == 1 && node.hold_queue, "5 transmissions (%d)", evs);
    uint16_t old_seq = H.seen[before].seq;
    host_send(&node, CB_WELCOME, 0, 40, wel, 9);
    CHECK(last_is(CB_EVENT) && H.seen[H.nseen - 1].seq != old_seq &&
          H.seen[H.nseen - 1].flags == CB_FLAG_NEEDS_ACK, "EVENT again after WELCOME, new seq");
    ev_seq = H.seen[H.nseen - 1].seq;
    ack[0] = (uint8_t)ev_seq; ack[1] = (uint8_t)(ev_seq >> 8);
    host_send(&node, CB_ACK, 0, 41, ack, 2);
    CHECK(!node.inflight_active, "acked");

    /* ACTION 0: ACK, ACTION_RESULT; duplicate (RETRANSMIT) re-ACKed, not executed again */
    uint8_t act[2] = {0, 0};
    host_send(&node, CB_ACTION, CB_FLAG_NEEDS_ACK, 50, act, 2);
    CHECK(H.actions == 1 && last_is(CB_ACTION_RESULT) && H.seen[H.nseen - 2].type == CB_ACK &&
          le16(H.seen[H.nseen - 2].payload) == 50 && le16(H.seen[H.nseen - 1].payload) == 50,
          "ACTION acked + result");
    uint16_t res_seq = H.seen[H.nseen - 1].seq;
    host_send(&node, CB_ACTION, CB_FLAG_NEEDS_ACK | CB_FLAG_RETRANSMIT, 50, act, 2);
    CHECK(H.actions == 1 && last_is(CB_ACK) && le16(H.seen[H.nseen - 1].payload) == 50, "dup ACTION");
    host_send(&node, CB_ACTION, CB_FLAG_NEEDS_ACK, 50, act, 2); /* no RETRANSMIT: new */
    CHECK(H.actions == 2, "same seq without RETRANSMIT is new");
    ack[0] = (uint8_t)res_seq; ack[1] = (uint8_t)(res_seq >> 8);
    host_send(&node, CB_ACK, 0, 51, ack, 2);
    advance(&node, 10);
    res_seq = H.seen[H.nseen - 1].seq;
    CHECK(last_is(CB_ACTION_RESULT), "second result follows");
    ack[0] = (uint8_t)res_seq; ack[1] = (uint8_t)(res_seq >> 8);
    host_send(&node, CB_ACK, 0, 52, ack, 2);
    act[0] = 9;
    host_send(&node, CB_ACTION, CB_FLAG_NEEDS_ACK, 53, act, 2);
    CHECK(nacked(CB_NACK_UNKNOWN_ACTION), "unknown action");
    host_send(&node, CB_CONFIG_GET, 0, 54, act, 1);
    CHECK(nacked(CB_NACK_UNKNOWN_KEY), "no config keys");

    /* firmware update: 1000-byte image in chunks, resume, verify, commit */
    uint8_t img[1000], sha[32], beg[4 + 32 + 6];
    for (int i = 0; i < 1000; i++) img[i] = (uint8_t)(i * 7 + 3);
    cb_sha256_t s;
    cb_sha256_init(&s); cb_sha256_update(&s, img, 1000); cb_sha256_final(&s, sha);
    beg[0] = 0xe8; beg[1] = 0x03; beg[2] = 0; beg[3] = 0;
    memcpy(beg + 4, sha, 32); beg[36] = 5; memcpy(beg + 37, "2.0.0", 5);
    host_send(&node, CB_FW_CHUNK, 0, 60, beg, 4);
    CHECK(nacked(CB_NACK_BAD_STATE), "chunk in IDLE");
    host_send(&node, CB_FW_BEGIN, 0, 61, beg, 42);
    CHECK(fw_status(CB_FW_RECEIVING, 0), "begin");
    uint8_t ch[204];
    for (uint32_t off = 0; off < 600; off += 200) {
        ch[0] = (uint8_t)off; ch[1] = (uint8_t)(off >> 8); ch[2] = 0; ch[3] = 0;
        memcpy(ch + 4, img + off, 200);
        host_send(&node, CB_FW_CHUNK, 0, 62, ch, 204);
    }
    CHECK(fw_status(CB_FW_RECEIVING, 600), "600 bytes");
    host_send(&node, CB_FW_CHUNK, 0, 63, ch, 204); /* duplicate of offset 400 */
    CHECK(fw_status(CB_FW_RECEIVING, 600), "duplicate ignored");
    host_send(&node, CB_FW_VERIFY, 0, 64, NULL, 0);
    CHECK(nacked(CB_NACK_BAD_STATE), "verify incomplete");
    host_send(&node, CB_FW_BEGIN, 0, 65, beg, 42);
    CHECK(fw_status(CB_FW_RECEIVING, 600), "resume at 600");
    for (uint32_t off = 600; off < 1000; off += 200) {
        ch[0] = (uint8_t)off; ch[1] = (uint8_t)(off >> 8);
        memcpy(ch + 4, img + off, 200);
        host_send(&node, CB_FW_CHUNK, 0, 66, ch, 204);
    }
    CHECK(fw_status(CB_FW_RECEIVING, 1000), "complete");
    ch[0] = 0xe8; ch[1] = 0x03;
    host_send(&node, CB_FW_CHUNK, 0, 67, ch, 5);
    CHECK(nacked(CB_NACK_BAD_PAYLOAD), "past size");
    host_send(&node, CB_FW_VERIFY, 0, 68, NULL, 0);
    CHECK(fw_status(CB_FW_VERIFIED, 1000) && memcmp(H.flash, img, 1000) == 0, "verified");
    host_send(&node, CB_FW_VERIFY, 0, 69, NULL, 0);
    CHECK(fw_status(CB_FW_VERIFIED, 1000), "verify repeat");
    host_send(&node, CB_FW_COMMIT, 0, 70, NULL, 0);
    CHECK(fw_status(CB_FW_COMMITTED, 1000) && H.committed, "committed");
    host_send(&node, CB_FW_ABORT, 0, 71, NULL, 0);
    CHECK(nacked(CB_NACK_BAD_STATE), "abort after commit");
    /* a second update with a wrong sha: VERIFY_FAILED, stays RECEIVING; abort */
    node.fw_state = CB_FW_IDLE;
    beg[4] ^= 1;
    beg[0] = 10; beg[1] = 0;
    host_send(&node, CB_FW_BEGIN, 0, 72, beg, 42);
    ch[0] = 0; ch[1] = 0;
    host_send(&node, CB_FW_CHUNK, 0, 73, ch, 14);
    host_send(&node, CB_FW_VERIFY, 0, 74, NULL, 0);
    CHECK(nacked(CB_NACK_VERIFY_FAILED) && node.fw_state == CB_FW_RECEIVING, "verify failed");
    host_send(&node, CB_FW_ABORT, 0, 75, NULL, 0);
    CHECK(fw_status(CB_FW_ROLLED_BACK, 0), "aborted");
    beg[0] = 0x01; beg[1] = 0x20; /* 8193 > slot */
    host_send(&node, CB_FW_BEGIN, 0, 76, beg, 42);
    CHECK(nacked(CB_NACK_TOO_LARGE), "too large");

    /* host silent for 15 s: back to HELLO */
    advance(&node, 15000);
    CHECK(!cb_node_online(&node), "host gone");
    int hellos = 0;
    for (int i = 0; i < H.nseen; i++) hellos += H.seen[i].type == CB_HELLO;
    CHECK(hellos >= 3, "HELLO again");
    CHECK(H.host.stats.frames == (uint32_t)H.nseen || H.nseen == MAX_SEEN, "node output decodes");
    CHECK(H.host.stats.discarded_bytes == 0, "node output clean");
}

/* ------------------------------------------------------------------ random streams */

static uint64_t lcg;
static uint32_t rnd(void)
{
    lcg = lcg * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(lcg >> 33);
}

/* A stream mixing good frames, corrupted ones, noise, long runs, truncations and length
 * errors; every part of it is deterministic in the seed. */
static size_t make_stream(uint64_t seed, uint8_t *out, size_t cap)
{
    size_t n = 0;
    lcg = seed;
    while (n + 600 < cap) {
        uint32_t kind = rnd() % 10;
        uint8_t payload[CB_MAX_PAYLOAD], wire[CB_MAX_WIRE];
        size_t plen = rnd() % (kind == 0 ? CB_MAX_PAYLOAD + 1 : 40);
        for (size_t i = 0; i < plen; i++)
            payload[i] = (uint8_t)(rnd() % 4 == 0 ? 0 : rnd());
        cb_frame_t f = {1, (uint8_t)rnd(), (uint8_t)(rnd() % 4), (uint16_t)rnd(), (uint8_t)plen, payload};
        size_t w = cb_encode_frame(&f, wire, sizeof wire);
        switch (kind) {
        case 0: case 1: case 2: case 3: /* good */
            memcpy(out + n, wire, w); n += w; break;
        case 4: /* one byte changed */
            wire[rnd() % (w - 1)] = (uint8_t)rnd();
            memcpy(out + n, wire, w); n += w; break;
        case 5: /* noise with some zeros */
            for (uint32_t i = rnd() % 40; i > 0; i--)
                out[n++] = (uint8_t)(rnd() % 16 == 0 ? 0 : rnd());
            break;
        case 6: out[n++] = 0; break;
        case 7: /* a long non-zero run */
            for (uint32_t i = 200 + rnd() % 200; i > 0; i--)
                out[n++] = (uint8_t)(1 + rnd() % 255);
            break;
        case 8: { /* truncated */
            size_t cut = rnd() % (w - 1);
            memcpy(out + n, wire, cut); n += cut; out[n++] = 0; break;
        }
        default: { /* length field wrong, CRC right */
            uint8_t raw[CB_MAX_FRAME];
            int m = cb_cobs_decode(wire, w - 1, raw, sizeof raw);
            raw[5] = (uint8_t)(raw[5] + 1 + rnd() % 3);
            uint16_t crc = cb_crc16(raw, (size_t)m - 2, 0xFFFF);
            raw[m - 2] = (uint8_t)crc; raw[m - 1] = (uint8_t)(crc >> 8);
            size_t e = cb_cobs_encode(raw, (size_t)m, out + n, cap - n);
            n += e; out[n++] = 0;
        }
        }
    }
    return n;
}

#define STREAM_CAP 200000u
static uint8_t stream_buf[STREAM_CAP];

static void test_fuzz(void)
{
    for (uint64_t seed = 1; seed <= 8; seed++) {
        size_t n = make_stream(seed, stream_buf, sizeof stream_buf);
        cb_decoder_t dec;
        uint64_t delivered = 0, zeros = 0;
        cb_decoder_init(&dec);
        for (size_t i = 0; i < n; i++) {
            zeros += stream_buf[i] == 0;
            if (cb_decoder_feed(&dec, stream_buf[i])) {
                delivered += (uint64_t)dec.frame.len + CB_MIN_FRAME + 1u; /* COBS size */
                CHECK(dec.frame.len <= CB_MAX_PAYLOAD, "len");
            }
        }
        const cb_stats_t *s = &dec.stats;
        /* every byte is either a delimiter, part of a delivered frame, discarded or pending */
        CHECK(zeros + delivered + s->discarded_bytes + dec.len + dec.skipped == n,
              "seed %llu: byte accounting", (unsigned long long)seed);
        CHECK(s->frames > 0 && s->cobs_errors > 0 && s->too_long > 0 && s->crc_errors > 0 &&
              s->length_errors > 0, "seed %llu: every counter exercised", (unsigned long long)seed);
    }
    /* pure noise */
    lcg = 99;
    cb_decoder_t dec;
    cb_decoder_init(&dec);
    for (int i = 0; i < 100000; i++)
        cb_decoder_feed(&dec, (uint8_t)rnd());
    CHECK(dec.len <= CB_MAX_ENCODED, "noise");
}

static int stream_main(uint64_t seed, const char *path)
{
    size_t n = make_stream(seed, stream_buf, sizeof stream_buf);
    cb_decoder_t dec;
    cb_decoder_init(&dec);
    if (path) {
        FILE *fp = fopen(path, "wb");
        if (!fp || fwrite(stream_buf, 1, n, fp) != n || fclose(fp) != 0) {
            perror(path);
            return 2;
        }
    }
    printf("{\"seed\": %llu, \"bytes\": %zu, \"frames_hex\": [", (unsigned long long)seed, n);
    int first = 1;
    for (size_t i = 0; i < n; i++) {
        if (!cb_decoder_feed(&dec, stream_buf[i]))
            continue;
        const cb_frame_t *f = &dec.frame;
        printf("%s\"%02x%02x%02x%02x%02x%02x", first ? "" : ", ", f->version, f->type, f->flags,
               f->seq & 0xFF, f->seq >> 8, f->len);
        for (size_t k = 0; k < f->len; k++)
            printf("%02x", f->payload[k]);
        printf("\"");
        first = 0;
    }
    const cb_stats_t *s = &dec.stats;
    printf("], \"counters\": {\"frames\": %u, \"cobs_errors\": %u, \"too_short\": %u, "
           "\"too_long\": %u, \"crc_errors\": %u, \"length_errors\": %u, \"discarded_bytes\": %u}}\n",
           s->frames, s->cobs_errors, s->too_short, s->too_long, s->crc_errors, s->length_errors,
           s->discarded_bytes);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "--stream") == 0)
        return stream_main(strtoull(argv[2], NULL, 10), argc >= 4 ? argv[3] : NULL);
    test_crc();
    test_cobs();
    test_vectors();
    test_values();
    test_sha256();
    test_node();
    test_fuzz();
    printf("sizeof(cb_node_t) = %zu, sizeof(cb_decoder_t) = %zu\n", sizeof(cb_node_t),
           sizeof(cb_decoder_t));
    printf("%d passed, %d failed\n", passed, failed);
    return failed ? 1 : 0;
}
