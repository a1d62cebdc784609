/* cbridge: see cbridge.h and firmware_bridge/PROTOCOL.md. */
#include "cbridge.h"

#include <string.h>

/* ------------------------------------------------------------------ wire layer */

uint16_t cb_crc16(const uint8_t *data, size_t len, uint16_t crc)
{
    uint32_t c = crc;
    for (size_t i = 0; i < len; i++) {
        c ^= (uint32_t)data[i] << 8;
        for (int b = 0; b < 8; b++)
            c = (c & 0x8000u) ? ((c << 1) ^ 0x1021u) : (c << 1);
        c &= 0xFFFFu;
    }
    return (uint16_t)c;
}

size_t cb_cobs_encode(const uint8_t *in, size_t len, uint8_t *out, size_t out_cap)
{
    size_t o = 0, code_at = 0;
    uint8_t code = 1;
    bool ended_full = false;
    if (out_cap < 1)
        return 0;
    code_at = o++;
    for (size_t i = 0; i < len; i++) {
        ended_full = false;
        if (in[i]) {
            if (o >= out_cap)
                return 0;
            out[o++] = in[i];
            code++;
            if (code == 0xFF) {
                out[code_at] = code;
                ended_full = true;
                code = 1;
                if (i + 1 < len) { /* a code byte follows only if more data does */
                    if (o >= out_cap)
                        return 0;
                    code_at = o++;
                }
            }
        } else {
            out[code_at] = code;
            code = 1;
            if (o >= out_cap)
                return 0;
            code_at = o++;
        }
    }
    if (!ended_full)
        out[code_at] = code;
    return o;
}

int cb_cobs_decode(const uint8_t *in, size_t len, uint8_t *out, size_t out_cap)
{
    size_t i = 0, o = 0;
    while (i < len) {
        uint8_t code = in[i];
        if (code == 0)
            return -1;
        size_t end = i + code;
        if (end > len)
            return -1;
        size_t n = (size_t)code - 1u;
        if (o + n > out_cap)
            return -1;
        memmove(out + o, in + i + 1, n); /* o <= i: safe in place */
        o += n;
        i = end;
        if (code != 0xFF && i < len) {
            if (o >= out_cap)
                return -1;
            out[o++] = 0;
        }
    }
    return (int)o;
}

size_t cb_encode_frame(const cb_frame_t *f, uint8_t *out, size_t out_cap)
{
    size_t n = CB_HEADER_SIZE + (size_t)f->len + CB_CRC_SIZE; /* raw frame size */
    if (f->len > CB_MAX_PAYLOAD || out_cap < n + 2u)
        return 0;
    /* Raw frame at out[1..n], then COBS in place: a frame < 254 bytes gets exactly one code
     * byte in front, so raw byte k lands at out[k + 1] where it already is. */
    uint8_t *raw = out + 1;
    raw[0] = f->version;
    raw[1] = f->type;
    raw[2] = f->flags;
    raw[3] = (uint8_t)(f->seq & 0xFFu);
    raw[4] = (uint8_t)(f->seq >> 8);
    raw[5] = f->len;
    if (f->len)
        memcpy(raw + CB_HEADER_SIZE, f->payload, f->len);
    uint16_t crc = cb_crc16(raw, CB_HEADER_SIZE + (size_t)f->len, 0xFFFFu);
    raw[n - 2] = (uint8_t)(crc & 0xFFu);
    raw[n - 1] = (uint8_t)(crc >> 8);
    size_t code_at = 0;
    for (size_t i = 1; i <= n; i++) {
        if (out[i] == 0) {
            out[code_at] = (uint8_t)(i - code_at);
            code_at = i;
        }
    }
    out[code_at] = (uint8_t)(n + 1 - code_at);
    out[n + 1] = 0x00;
    return n + 2;
}

cb_result_t cb_parse_frame(const uint8_t *raw, size_t len, cb_frame_t *f)
{
    if (len < CB_MIN_FRAME)
        return CB_ERR_TOO_SHORT;
    if (len > CB_MAX_FRAME)
        return CB_ERR_TOO_LONG;
    uint16_t got = (uint16_t)(raw[len - 2] | (uint16_t)(raw[len - 1] << 8));
    if (got != cb_crc16(raw, len - CB_CRC_SIZE, 0xFFFFu))
        return CB_ERR_CRC;
    if (raw[5] != len - CB_MIN_FRAME)
        return CB_ERR_LENGTH;
    f->version = raw[0];
    f->type = raw[1];
    f->flags = raw[2];
    f->seq = (uint16_t)(raw[3] | (uint16_t)(raw[4] << 8));
    f->len = raw[5];
    f->payload = raw + CB_HEADER_SIZE;
    return CB_OK;
}

void cb_decoder_init(cb_decoder_t *dec) { memset(dec, 0, sizeof *dec); }

bool cb_decoder_feed(cb_decoder_t *d, uint8_t byte)
{
    if (byte != 0x00) {
        if (d->len < CB_MAX_ENCODED)
            d->buf[d->len++] = byte;
        else
            d->skipped++;
        return false;
    }
    uint32_t size = (uint32_t)d->len + d->skipped;
    cb_result_t res;
    if (d->skipped) {
        res = CB_ERR_TOO_LONG;
    } else if (size == 0) {
        return false; /* empty frame: ignored, counted nowhere */
    } else {
        int n = cb_cobs_decode(d->buf, d->len, d->buf, sizeof d->buf);
        res = n < 0 ? CB_ERR_COBS : cb_parse_frame(d->buf, (size_t)n, &d->frame);
    }
    d->len = 0;
    d->skipped = 0;
    switch (res) {
    case CB_OK:
        d->stats.frames++;
        return true;
    case CB_ERR_TOO_LONG: d->stats.too_long++; break;
    case CB_ERR_COBS: d->stats.cobs_errors++; break;
    case CB_ERR_TOO_SHORT: d->stats.too_short++; break;
    case CB_ERR_CRC: d->stats.crc_errors++; break;
    case CB_ERR_LENGTH: d->stats.length_errors++; break;
    }
    d->stats.discarded_bytes += size;
    return false;
}

/* ------------------------------------------------------------------ values */

cb_value_t cb_value_bool(bool b) { cb_value_t v; memset(&v, 0, sizeof v); v.tag = b ? CB_TAG_TRUE : CB_TAG_FALSE; return v; }
cb_value_t cb_value_int8(int8_t x) { cb_value_t v; memset(&v, 0, sizeof v); v.tag = CB_TAG_INT8; v.v.i = x; return v; }
cb_value_t cb_value_int16(int16_t x) { cb_value_t v; memset(&v, 0, sizeof v); v.tag = CB_TAG_INT16; v.v.i = x; return v; }
cb_value_t cb_value_int32(int32_t x) { cb_value_t v; memset(&v, 0, sizeof v); v.tag = CB_TAG_INT32; v.v.i = x; return v; }
cb_value_t cb_value_uint32(uint32_t x) { cb_value_t v; memset(&v, 0, sizeof v); v.tag = CB_TAG_UINT32; v.v.u = x; return v; }
cb_value_t cb_value_float32(float x) { cb_value_t v; memset(&v, 0, sizeof v); v.tag = CB_TAG_FLOAT32; v.v.f = x; return v; }
cb_value_t cb_value_string(const char *s)
{
    cb_value_t v;
    memset(&v, 0, sizeof v);
    size_t n = strlen(s);
    v.tag = CB_TAG_STRING;
    v.v.s.ptr = (const uint8_t *)s;
    v.v.s.len = (uint8_t)(n > 255u ? 255u : n);
    return v;
}

void cb_writer_init(cb_writer_t *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->err = false;
}

void cb_w_bytes(cb_writer_t *w, const uint8_t *p, size_t n)
{
    if (w->err || n > w->cap - w->len) {
        w->err = true;
        return;
    }
    if (n)
        memcpy(w->buf + w->len, p, n);
    w->len += n;
}

void cb_w_u8(cb_writer_t *w, uint8_t x) { cb_w_bytes(w, &x, 1); }
void cb_w_u16(cb_writer_t *w, uint16_t x)
{
    uint8_t b[2] = {(uint8_t)(x & 0xFFu), (uint8_t)(x >> 8)};
    cb_w_bytes(w, b, 2);
}
void cb_w_u32(cb_writer_t *w, uint32_t x)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++)
        b[i] = (uint8_t)(x >> (8 * i));
    cb_w_bytes(w, b, 4);
}
void cb_w_u64(cb_writer_t *w, uint64_t x)
{
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(x >> (8 * i));
    cb_w_bytes(w, b, 8);
}
void cb_w_str(cb_writer_t *w, const uint8_t *s, size_t n)
{
    if (n > 255u) {
        w->err = true;
        return;
    }
    cb_w_u8(w, (uint8_t)n);
    cb_w_bytes(w, s, n);
}

void cb_w_value(cb_writer_t *w, const cb_value_t *v)
{
    uint32_t bits;
    cb_w_u8(w, v->tag);
    switch (v->tag) {
    case CB_TAG_FALSE:
    case CB_TAG_TRUE: break;
    case CB_TAG_INT8: cb_w_u8(w, (uint8_t)(v->v.i & 0xFF)); break;
    case CB_TAG_INT16: cb_w_u16(w, (uint16_t)((uint32_t)v->v.i & 0xFFFFu)); break;
    case CB_TAG_INT32: cb_w_u32(w, (uint32_t)v->v.i); break;
    case CB_TAG_UINT32: cb_w_u32(w, v->v.u); break;
    case CB_TAG_FLOAT32:
        memcpy(&bits, &v->v.f, 4);
        cb_w_u32(w, bits);
        break;
    case CB_TAG_STRING: cb_w_str(w, v->v.s.ptr, v->v.s.len); break;
    default: w->err = true;
    }
}

void cb_w_point(cb_writer_t *w, uint8_t id, const cb_value_t *v)
{
    cb_w_u8(w, id);
    cb_w_value(w, v);
}

void cb_reader_init(cb_reader_t *r, const uint8_t *buf, size_t len)
{
    r->buf = buf;
    r->len = len;
    r->pos = 0;
    r->err = false;
}

const uint8_t *cb_r_bytes(cb_reader_t *r, size_t n)
{
    if (r->err || n > r->len - r->pos) {
        r->err = true;
        return NULL;
    }
    const uint8_t *p = r->buf + r->pos;
    r->pos += n;
    return p;
}

static uint64_t r_le(cb_reader_t *r, size_t n)
{
    const uint8_t *p = cb_r_bytes(r, n);
    uint64_t x = 0;
    if (!p)
        return 0;
    for (size_t i = 0; i < n; i++)
        x |= (uint64_t)p[i] << (8u * i);
    return x;
}

uint8_t cb_r_u8(cb_reader_t *r) { return (uint8_t)r_le(r, 1); }
uint16_t cb_r_u16(cb_reader_t *r) { return (uint16_t)r_le(r, 2); }
uint32_t cb_r_u32(cb_reader_t *r) { return (uint32_t)r_le(r, 4); }
uint64_t cb_r_u64(cb_reader_t *r) { return r_le(r, 8); }

bool cb_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) { i++; continue; }
        if (c >= 0xC2 && c <= 0xDF) { k = 1; cp = c & 0x1Fu; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { k = 2; cp = c & 0x0Fu; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { k = 3; cp = c & 0x07u; min = 0x10000; }
        else return false;
        if (k > n - i - 1)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xC0u) != 0x80u)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3Fu);
        }
        if (cp < min || cp > 0x10FFFFu || (cp >= 0xD800u && cp <= 0xDFFFu))
            return false; /* overlong, out of range, surrogate: rejected like Python */
        i += k + 1;
    }
    return true;
}

bool cb_r_str(cb_reader_t *r, const uint8_t **s, uint8_t *n)
{
    uint8_t len = cb_r_u8(r);
    const uint8_t *p = cb_r_bytes(r, len);
    if (!p || !cb_utf8_valid(p, len)) {
        r->err = true;
        return false;
    }
    *s = p;
    *n = len;
    return true;
}

bool cb_r_value(cb_reader_t *r, cb_value_t *v)
{
    uint32_t bits;
    memset(v, 0, sizeof *v);
    v->tag = cb_r_u8(r);
    switch (v->tag) {
    case CB_TAG_FALSE:
    case CB_TAG_TRUE: break;
    case CB_TAG_INT8: v->v.i = (int8_t)cb_r_u8(r); break;
    case CB_TAG_INT16: v->v.i = (int16_t)cb_r_u16(r); break;
    case CB_TAG_INT32: v->v.i = (int32_t)cb_r_u32(r); break;
    case CB_TAG_UINT32: v->v.u = cb_r_u32(r); break;
    case CB_TAG_FLOAT32:
        bits = cb_r_u32(r);
        memcpy(&v->v.f, &bits, 4);
        break;
    case CB_TAG_STRING: cb_r_str(r, &v->v.s.ptr, &v->v.s.len); break;
    default: r->err = true;
    }
    return !r->err;
}

bool cb_r_end(cb_reader_t *r) { return !r->err && r->pos == r->len; }

bool cb_type_needs_ack(uint8_t type)
{
    return type == CB_EVENT || type == CB_CONFIG_SET || type == CB_ACTION ||
           type == CB_ACTION_RESULT;
}

static void r_values(cb_reader_t *r, unsigned count, bool with_ids)
{
    cb_value_t v;
    for (unsigned i = 0; i < count && !r->err; i++) {
        if (with_ids)
            cb_r_u8(r);
        cb_r_value(r, &v);
    }
}

uint8_t cb_check_payload(uint8_t type, const uint8_t *payload, size_t len)
{
    cb_reader_t r;
    const uint8_t *s;
    uint8_t n;
    cb_value_t v;
    cb_reader_init(&r, payload, len);
    switch (type) {
    case CB_HELLO:
        cb_r_u8(&r); cb_r_u8(&r); cb_r_bytes(&r, 8);
        cb_r_str(&r, &s, &n); cb_r_str(&r, &s, &n);
        break;
    case CB_WELCOME: cb_r_u8(&r); cb_r_u64(&r); break;
    case CB_HEARTBEAT:
    case CB_FW_VERIFY:
    case CB_FW_COMMIT:
    case CB_FW_ABORT: break;
    case CB_ACK: cb_r_u16(&r); break;
    case CB_NACK: cb_r_u16(&r); cb_r_u8(&r); break;
    case CB_DATA:
    case CB_EVENT: n = cb_r_u8(&r); r_values(&r, n, true); break;
    case CB_TIME_SYNC: cb_r_u64(&r); break;
    case CB_CONFIG_GET: cb_r_u8(&r); break;
    case CB_CONFIG_SET:
    case CB_CONFIG_VALUE: cb_r_u8(&r); cb_r_value(&r, &v); break;
    case CB_ACTION: cb_r_u8(&r); n = cb_r_u8(&r); r_values(&r, n, false); break;
    case CB_ACTION_RESULT: cb_r_u16(&r); cb_r_u8(&r); cb_r_str(&r, &s, &n); break;
    case CB_FW_BEGIN: cb_r_u32(&r); cb_r_bytes(&r, 32); cb_r_str(&r, &s, &n); break;
    case CB_FW_CHUNK:
        cb_r_u32(&r);
        if (!r.err && r.len - r.pos > CB_MAX_FW_CHUNK)
            return CB_NACK_BAD_PAYLOAD;
        r.pos = r.len;
        break;
    case CB_FW_STATUS: cb_r_u8(&r); cb_r_u32(&r); break;
    default: return CB_NACK_UNSUPPORTED_TYPE;
    }
    return cb_r_end(&r) ? 0 : CB_NACK_BAD_PAYLOAD;
}

/* ------------------------------------------------------------------ SHA-256 */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

#define ROR(x, n) (((x) >> (n)) | ((x) << (32u - (n))))

static void sha_block(cb_sha256_t *s, const uint8_t *p)
{
    uint32_t w[64], a, b, c, d, e, f, g, h;
    for (int i = 0; i < 16; i++)
        w[i] = ((uint32_t)p[4 * i] << 24) | ((uint32_t)p[4 * i + 1] << 16) |
               ((uint32_t)p[4 * i + 2] << 8) | (uint32_t)p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7u) ^ ROR(w[i - 15], 18u) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17u) ^ ROR(w[i - 2], 19u) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3];
    e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR(e, 6u) ^ ROR(e, 11u) ^ ROR(e, 25u)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2u) ^ ROR(a, 13u) ^ ROR(a, 22u)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
    s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

void cb_sha256_init(cb_sha256_t *s)
{
    static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(s->h, iv, sizeof iv);
    s->total = 0;
    s->used = 0;
}

void cb_sha256_update(cb_sha256_t *s, const uint8_t *data, size_t len)
{
    s->total += len;
    while (len) {
        size_t n = 64u - s->used;
        if (n > len)
            n = len;
        memcpy(s->block + s->used, data, n);
        s->used = (uint8_t)(s->used + n);
        data += n;
        len -= n;
        if (s->used == 64) {
            sha_block(s, s->block);
            s->used = 0;
        }
    }
}

void cb_sha256_final(cb_sha256_t *s, uint8_t out[32])
{
    uint64_t bits = s->total * 8u;
    uint8_t pad = 0x80;
    uint8_t zero = 0;
    uint8_t lenb[8];
    cb_sha256_update(s, &pad, 1);
    while (s->used != 56)
        cb_sha256_update(s, &zero, 1);
    for (int i = 0; i < 8; i++)
        lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
    cb_sha256_update(s, lenb, 8);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (uint8_t)(s->h[i] >> 24);
        out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
        out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
        out[4 * i + 3] = (uint8_t)s->h[i];
    }
}

/* ------------------------------------------------------------------ node */

static void node_event(cb_node_t *n, cb_node_event_t ev, uint64_t arg)
{
    if (n->cfg.on_event)
        n->cfg.on_event(n->cfg.ctx, ev, arg);
}

static uint32_t node_now(cb_node_t *n) { return n->cfg.now_ms(n->cfg.ctx); }

static void node_write(cb_node_t *n, uint8_t type, uint8_t flags, uint16_t seq,
                       const uint8_t *payload, size_t len)
{
    cb_frame_t f;
    /* bootstrap frames are always version 1; others use the negotiated version */
    f.version = (type == CB_HELLO || !n->online) ? CB_PROTO_VERSION : n->version;
    f.type = type;
    f.flags = flags;
    f.seq = seq;
    f.len = (uint8_t)len;
    f.payload = payload;
    size_t w = cb_encode_frame(&f, n->tx, sizeof n->tx);
    if (w) {
        n->cfg.write(n->cfg.ctx, n->tx, w);
        n->last_tx = node_now(n);
    }
}

/* A new frame: takes the next seq. Returns that seq. */
static uint16_t node_send(cb_node_t *n, uint8_t type, const uint8_t *payload, size_t len)
{
    uint16_t seq = n->seq++;
    node_write(n, type, cb_type_needs_ack(type) ? CB_FLAG_NEEDS_ACK : 0, seq, payload, len);
    return seq;
}

static void node_ack(cb_node_t *n, uint16_t seq)
{
    uint8_t p[2] = {(uint8_t)(seq & 0xFFu), (uint8_t)(seq >> 8)};
    node_send(n, CB_ACK, p, 2);
}

static void node_nack(cb_node_t *n, uint16_t seq, uint8_t reason)
{
    uint8_t p[3] = {(uint8_t)(seq & 0xFFu), (uint8_t)(seq >> 8), reason};
    node_send(n, CB_NACK, p, 3);
}

static void node_fw_status(cb_node_t *n)
{
    uint8_t p[5];
    uint32_t next = n->fw_next;
    p[0] = n->fw_state;
    for (int i = 0; i < 4; i++)
        p[1 + i] = (uint8_t)(next >> (8 * i));
    node_send(n, CB_FW_STATUS, p, 5);
}

static void node_hello(cb_node_t *n)
{
    uint8_t p[CB_MAX_PAYLOAD];
    cb_writer_t w;
    cb_writer_init(&w, p, sizeof p);
    cb_w_u8(&w, CB_PROTO_VERSION); /* proto_min */
    cb_w_u8(&w, CB_PROTO_VERSION); /* proto_max */
    cb_w_bytes(&w, n->cfg.uid, 8);
    cb_w_str(&w, (const uint8_t *)n->cfg.model, strlen(n->cfg.model));
    cb_w_str(&w, (const uint8_t *)n->cfg.fw_version, strlen(n->cfg.fw_version));
    if (w.err)
        return;
    node_send(n, CB_HELLO, p, w.len);
    n->hello_sent = true;
    n->last_hello = node_now(n);
}

static bool queue_push(cb_node_t *n, uint8_t type, const uint8_t *p, size_t len, bool front)
{
    if (n->q_count >= CB_TXQ_LEN || len > CB_MAX_PAYLOAD)
        return false;
    uint8_t idx;
    if (front) {
        n->q_head = (uint8_t)((n->q_head + CB_TXQ_LEN - 1u) % CB_TXQ_LEN);
        idx = n->q_head;
    } else {
        idx = (uint8_t)((n->q_head + n->q_count) % CB_TXQ_LEN);
    }
    n->queue[idx].type = type;
    n->queue[idx].len = (uint8_t)len;
    if (len)
        memmove(n->queue[idx].payload, p, len);
    n->q_count++;
    return true;
}

/* Give up on / suspend the frame in flight: an EVENT is kept and sent again (new seq) after
 * the next WELCOME; anything else is dropped. */
static void inflight_drop(cb_node_t *n)
{
    if (!n->inflight_active)
        return;
    n->inflight_active = false;
    n->undelivered++;
    node_event(n, CB_NODE_UNDELIVERED, n->inflight_seq | ((uint64_t)n->inflight.type << 16));
    if (n->inflight.type == CB_EVENT &&
        queue_push(n, CB_EVENT, n->inflight.payload, n->inflight.len, true))
        n->hold_queue = true;
}

static void node_lost(cb_node_t *n)
{
    n->online = false;
    inflight_drop(n);
    node_event(n, CB_NODE_HOST_LOST, 0);
    node_hello(n);
}

void cb_node_init(cb_node_t *n, const cb_node_config_t *cfg)
{
    memset(n, 0, sizeof *n);
    n->cfg = *cfg;
    n->version = CB_PROTO_VERSION;
    cb_decoder_init(&n->dec);
    n->fw_state = CB_FW_IDLE;
    n->last_rx = n->last_tx = node_now(n);
}

bool cb_node_online(const cb_node_t *n) { return n->online; }

uint64_t cb_node_unix_ms(const cb_node_t *n)
{
    if (!n->unix_ms_at_sync)
        return 0;
    return n->unix_ms_at_sync + (uint32_t)(n->cfg.now_ms(n->cfg.ctx) - n->ms_at_sync);
}

bool cb_node_send_data(cb_node_t *n, const uint8_t *points, size_t len)
{
    if (!n->online || len > CB_MAX_PAYLOAD)
        return false;
    node_send(n, CB_DATA, points, len);
    return true;
}

bool cb_node_send_event(cb_node_t *n, const uint8_t *points, size_t len)
{
    if (!queue_push(n, CB_EVENT, points, len, false))
        return false;
    cb_node_poll(n);
    return true;
}

static bool dedup_seen(const cb_node_t *n, uint16_t seq)
{
    for (unsigned i = 0; i < n->dedup_count; i++)
        if (n->dedup[i] == seq)
            return true;
    return false;
}

static void dedup_remember(cb_node_t *n, uint16_t seq)
{
    for (unsigned i = 0; i < n->dedup_count; i++)
        if (n->dedup[i] == seq) /* a new frame replaces an older equal seq */
            return;
    n->dedup[n->dedup_next] = seq;
    n->dedup_next = (uint8_t)((n->dedup_next + 1u) % CB_DEDUP_WINDOW);
    if (n->dedup_count < CB_DEDUP_WINDOW)
        n->dedup_count++;
}

static void set_time(cb_node_t *n, uint64_t unix_ms)
{
    n->unix_ms_at_sync = unix_ms;
    n->ms_at_sync = node_now(n);
}

static void handle_action(cb_node_t *n, const cb_frame_t *f)
{
    uint8_t status = CB_ACTION_OK;
    char msg[CB_ACTION_MSG_MAX];
    uint8_t reason;
    if ((f->flags & CB_FLAG_RETRANSMIT) && dedup_seen(n, f->seq)) {
        node_ack(n, f->seq); /* duplicate: ACK again, do not run again */
        return;
    }
    if (n->q_count >= CB_TXQ_LEN) { /* no room for the ACTION_RESULT */
        node_nack(n, f->seq, CB_NACK_BUSY);
        return;
    }
    msg[0] = '\0';
    reason = CB_NACK_UNKNOWN_ACTION;
    if (n->cfg.on_action)
        reason = n->cfg.on_action(n->cfg.ctx, f->payload[0], f->payload[1], f->payload + 2,
                                  (size_t)f->len - 2u, &status, msg, sizeof msg);
    if (reason) {
        node_nack(n, f->seq, reason);
        return;
    }
    dedup_remember(n, f->seq);
    node_ack(n, f->seq);
    uint8_t p[3 + 1 + CB_ACTION_MSG_MAX];
    cb_writer_t w;
    msg[sizeof msg - 1] = '\0';
    size_t ml = strlen(msg);
    if (!cb_utf8_valid((const uint8_t *)msg, ml))
        ml = 0;
    cb_writer_init(&w, p, sizeof p);
    cb_w_u16(&w, f->seq);
    cb_w_u8(&w, status);
    cb_w_str(&w, (const uint8_t *)msg, ml);
    queue_push(n, CB_ACTION_RESULT, p, w.len, false);
    cb_node_poll(n);
}

static void handle_fw(cb_node_t *n, const cb_frame_t *f)
{
    cb_reader_t r;
    cb_reader_init(&r, f->payload, f->len);
    if (!n->cfg.flash) {
        node_nack(n, f->seq, CB_NACK_UNSUPPORTED_TYPE);
        return;
    }
    switch (f->type) {
    case CB_FW_BEGIN: {
        uint32_t size = cb_r_u32(&r);
        const uint8_t *sha = cb_r_bytes(&r, 32);
        if (n->fw_state == CB_FW_COMMITTED) {
            node_nack(n, f->seq, CB_NACK_BAD_STATE);
            return;
        }
        if (size > n->cfg.fw_slot_size) {
            node_nack(n, f->seq, CB_NACK_TOO_LARGE);
            return;
        }
        if ((n->fw_state == CB_FW_RECEIVING || n->fw_state == CB_FW_VERIFIED) &&
            size == n->fw_size && memcmp(sha, n->fw_sha, 32) == 0) {
            node_fw_status(n); /* resume */
            return;
        }
        if (n->cfg.flash(n->cfg.ctx, CB_FLASH_ERASE, 0, NULL, size) != 0) {
            node_nack(n, f->seq, CB_NACK_BUSY);
            return;
        }
        n->fw_state = CB_FW_RECEIVING;
        n->fw_size = size;
        n->fw_next = 0;
        memcpy(n->fw_sha, sha, 32);
        cb_sha256_init(&n->fw_hash);
        node_fw_status(n);
        return;
    }
    case CB_FW_CHUNK: {
        uint32_t off = cb_r_u32(&r);
        size_t len = (size_t)f->len - 4u;
        if (n->fw_state != CB_FW_RECEIVING) {
            node_nack(n, f->seq, CB_NACK_BAD_STATE);
            return;
        }
        if (off == n->fw_next) {
            if (len > n->fw_size - off) {
                node_nack(n, f->seq, CB_NACK_BAD_PAYLOAD);
                return;
            }
            if (len && n->cfg.flash(n->cfg.ctx, CB_FLASH_WRITE, off, f->payload + 4, len) != 0) {
                node_nack(n, f->seq, CB_NACK_BUSY);
                return;
            }
            cb_sha256_update(&n->fw_hash, f->payload + 4, len);
            n->fw_next += (uint32_t)len;
        }
        node_fw_status(n); /* offset != next_offset: duplicate or gap, data ignored */
        return;
    }
    case CB_FW_VERIFY:
        if (n->fw_state == CB_FW_RECEIVING && n->fw_next == n->fw_size) {
            uint8_t digest[32];
            cb_sha256_t copy = n->fw_hash; /* stays RECEIVING on failure */
            cb_sha256_final(&copy, digest);
            if (memcmp(digest, n->fw_sha, 32) != 0) {
                node_nack(n, f->seq, CB_NACK_VERIFY_FAILED);
                return;
            }
            n->fw_state = CB_FW_VERIFIED;
            node_fw_status(n);
        } else if (n->fw_state == CB_FW_VERIFIED) {
            node_fw_status(n);
        } else {
            node_nack(n, f->seq, CB_NACK_BAD_STATE); /* incl. RECEIVING, image incomplete */
        }
        return;
    case CB_FW_COMMIT:
        if (n->fw_state == CB_FW_VERIFIED) {
            n->fw_state = CB_FW_COMMITTED;
            n->cfg.flash(n->cfg.ctx, CB_FLASH_COMMIT, 0, NULL, n->fw_size);
            node_fw_status(n);
            node_event(n, CB_NODE_FW_COMMITTED, n->fw_size);
        } else if (n->fw_state == CB_FW_COMMITTED) {
            node_fw_status(n);
        } else {
            node_nack(n, f->seq, CB_NACK_BAD_STATE);
        }
        return;
    case CB_FW_ABORT:
        if (n->fw_state == CB_FW_COMMITTED) {
            node_nack(n, f->seq, CB_NACK_BAD_STATE);
            return;
        }
        n->cfg.flash(n->cfg.ctx, CB_FLASH_ABORT, 0, NULL, 0);
        n->fw_state = CB_FW_ROLLED_BACK;
        n->fw_size = 0;
        n->fw_next = 0;
        node_fw_status(n);
        return;
    default:
        return;
    }
}

static void handle_ack_nack(cb_node_t *n, const cb_frame_t *f)
{
    cb_reader_t r;
    cb_reader_init(&r, f->payload, f->len);
    uint16_t seq = cb_r_u16(&r);
    uint8_t reason = f->type == CB_NACK ? cb_r_u8(&r) : 0;
    if (f->type == CB_NACK && (reason == CB_NACK_HELLO_REQUIRED || reason == CB_NACK_VERSION)) {
        if (reason == CB_NACK_HELLO_REQUIRED && n->online)
            node_lost(n); /* host restarted: HELLO at once */
        else if (reason == CB_NACK_HELLO_REQUIRED)
            node_hello(n);
        return; /* VERSION: keep sending HELLO every 2 s */
    }
    if (!n->inflight_active || seq != n->inflight_seq)
        return; /* not waiting on it: ignored */
    if (f->type == CB_ACK) {
        n->inflight_active = false;
        node_event(n, CB_NODE_DELIVERED, seq | ((uint64_t)n->inflight.type << 16));
    } else if (reason == CB_NACK_BUSY) {
        n->inflight_last_tx = node_now(n); /* retry 500 ms from now, same 5 transmissions */
    } else {
        n->inflight_active = false;
        n->undelivered++;
        node_event(n, CB_NODE_UNDELIVERED, seq | ((uint64_t)n->inflight.type << 16));
    }
}

static void node_handle(cb_node_t *n, const cb_frame_t *f)
{
    cb_reader_t r;
    uint8_t bad;
    n->last_rx = node_now(n);
    if (f->version != (n->online ? n->version : CB_PROTO_VERSION) &&
        !(f->type == CB_WELCOME && f->version == CB_PROTO_VERSION)) {
        if (f->type != CB_ACK && f->type != CB_NACK)
            node_nack(n, f->seq, CB_NACK_VERSION);
        return;
    }
    if (!n->online && f->type != CB_WELCOME && f->type != CB_NACK)
        return; /* until WELCOME, everything else is ignored */
    bad = cb_check_payload(f->type, f->payload, f->len);
    if (bad) {
        if (f->type != CB_ACK && f->type != CB_NACK)
            node_nack(n, f->seq, bad);
        return;
    }
    cb_reader_init(&r, f->payload, f->len);
    switch (f->type) {
    case CB_WELCOME: {
        uint8_t version = cb_r_u8(&r);
        uint64_t unix_ms = cb_r_u64(&r);
        if (version != CB_PROTO_VERSION) { /* outside [proto_min, proto_max] */
            node_nack(n, f->seq, CB_NACK_VERSION);
            return;
        }
        n->version = version;
        n->online = true;
        n->dedup_count = 0;
        n->dedup_next = 0;
        n->hold_queue = false;
        set_time(n, unix_ms);
        node_event(n, CB_NODE_WELCOMED, unix_ms);
        cb_node_poll(n); /* held EVENTs go out now */
        return;
    }
    case CB_ACK:
    case CB_NACK: handle_ack_nack(n, f); return;
    case CB_HEARTBEAT: return;
    case CB_TIME_SYNC:
        set_time(n, cb_r_u64(&r));
        node_event(n, CB_NODE_TIME, n->unix_ms_at_sync);
        return;
    case CB_CONFIG_GET: node_nack(n, f->seq, CB_NACK_UNKNOWN_KEY); return;
    case CB_CONFIG_SET:
        if ((f->flags & CB_FLAG_RETRANSMIT) && dedup_seen(n, f->seq))
            node_ack(n, f->seq);
        else
            node_nack(n, f->seq, CB_NACK_UNKNOWN_KEY); /* this reference node has no keys */
        return;
    case CB_ACTION: handle_action(n, f); return;
    case CB_FW_BEGIN:
    case CB_FW_CHUNK:
    case CB_FW_VERIFY:
    case CB_FW_COMMIT:
    case CB_FW_ABORT: handle_fw(n, f); return;
    default: /* node -> host types: not implemented by a node */
        node_nack(n, f->seq, CB_NACK_UNSUPPORTED_TYPE);
        return;
    }
}

void cb_node_feed(cb_node_t *n, uint8_t byte)
{
    if (cb_decoder_feed(&n->dec, byte))
        node_handle(n, &n->dec.frame);
}

void cb_node_poll(cb_node_t *n)
{
    uint32_t now = node_now(n);
    if (!n->online) {
        if (!n->hello_sent || (uint32_t)(now - n->last_hello) >= CB_HELLO_MS)
            node_hello(n);
        return;
    }
    if ((uint32_t)(now - n->last_rx) >= CB_HOST_GONE_MS) {
        node_lost(n);
        return;
    }
    if (n->inflight_active && (uint32_t)(now - n->inflight_last_tx) >= CB_RETRY_MS) {
        if (n->inflight_tx_count >= CB_MAX_TRANSMISSIONS) {
            inflight_drop(n);
        } else {
            node_write(n, n->inflight.type, CB_FLAG_NEEDS_ACK | CB_FLAG_RETRANSMIT,
                       n->inflight_seq, n->inflight.payload, n->inflight.len);
            n->inflight_tx_count++;
            n->inflight_last_tx = now;
        }
    }
    if (!n->inflight_active && n->q_count && !n->hold_queue) {
        n->inflight = n->queue[n->q_head];
        n->q_head = (uint8_t)((n->q_head + 1u) % CB_TXQ_LEN);
        n->q_count--;
        n->inflight_active = true;
        n->inflight_tx_count = 1;
        n->inflight_seq = node_send(n, n->inflight.type, n->inflight.payload, n->inflight.len);
        n->inflight_last_tx = now;
    }
    if ((uint32_t)(now - n->last_tx) >= CB_HEARTBEAT_MS)
        node_send(n, CB_HEARTBEAT, NULL, 0);
}
