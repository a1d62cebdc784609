/* example_node: a cbridge node over a serial device (POSIX, 115200 8N1 raw).
 *
 *   example_node DEVICE [--once] [--fw-out FILE]
 *
 * Sends HELLO (model "c-example-node", fw "1.0.0"); once welcomed, DATA every second
 * (point 0 = temperature x10 as int16, point 1 = door as bool) and an EVENT every 5 s
 * (point 2 = alarm true, NEEDS_ACK, retransmitted until ACKed). ACTION 0 toggles the door.
 * Firmware updates are received into a RAM buffer (written to FILE on commit, if given).
 * --once: exit 0 after the first EVENT is acknowledged. SIGTERM/SIGINT: exit cleanly.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cbridge.h"

#define FW_SLOT (256u * 1024u)

static volatile sig_atomic_t stop_requested;
static uint8_t fw_slot[FW_SLOT];

typedef struct {
    int fd;
    bool door;
    bool once;
    bool event_acked;
    const char *fw_out;
    uint32_t fw_size;
} app_t;

static void on_signal(int sig) { (void)sig; stop_requested = 1; }

static uint32_t now_ms(void *ctx)
{
    struct timespec ts;
    (void)ctx;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint32_t)((uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u);
}

static void write_all(void *ctx, const uint8_t *data, size_t len)
{
    app_t *app = ctx;
    while (len) {
        ssize_t w = write(app->fd, data, len);
        if (w < 0) {
            if (errno == EINTR || errno == EAGAIN)
                continue;
            perror("write");
            stop_requested = 1;
            return;
        }
        data += w;
        len -= (size_t)w;
    }
}

static uint8_t on_action(void *ctx, uint8_t id, uint8_t argc, const uint8_t *args, size_t n,
                         uint8_t *status, char *msg, size_t cap)
{
    app_t *app = ctx;
    (void)args;
    (void)n;
    if (id != 0)
        return CB_NACK_UNKNOWN_ACTION;
    if (argc != 0)
        return CB_NACK_BAD_PAYLOAD;
    app->door = !app->door;
    *status = CB_ACTION_OK;
    snprintf(msg, cap, "door %s", app->door ? "open" : "closed");
    fprintf(stderr, "example_node: action 0: %s\n", msg);
    return 0;
}

static int on_flash(void *ctx, cb_flash_op_t op, uint32_t off, const uint8_t *data, size_t len)
{
    app_t *app = ctx;
    switch (op) {
    case CB_FLASH_ERASE:
        if (len > FW_SLOT)
            return -1;
        memset(fw_slot, 0xFF, sizeof fw_slot);
        app->fw_size = (uint32_t)len;
        return 0;
    case CB_FLASH_WRITE:
        if (off > FW_SLOT || len > FW_SLOT - off)
            return -1;
        memcpy(fw_slot + off, data, len);
        return 0;
    case CB_FLASH_COMMIT:
        fprintf(stderr, "example_node: firmware of %u bytes committed\n", (unsigned)app->fw_size);
        if (app->fw_out) {
            FILE *fp = fopen(app->fw_out, "wb");
            if (!fp || fwrite(fw_slot, 1, app->fw_size, fp) != app->fw_size || fclose(fp) != 0) {
                perror(app->fw_out);
                return -1;
            }
        }
        return 0;
    case CB_FLASH_ABORT:
        app->fw_size = 0;
        return 0;
    }
    return -1;
}

static void on_event(void *ctx, cb_node_event_t ev, uint64_t arg)
{
    app_t *app = ctx;
    switch (ev) {
    case CB_NODE_WELCOMED:
        fprintf(stderr, "example_node: welcomed, unix_ms %llu\n", (unsigned long long)arg);
        break;
    case CB_NODE_HOST_LOST: fprintf(stderr, "example_node: host lost, HELLO again\n"); break;
    case CB_NODE_DELIVERED:
        if ((arg >> 16) == CB_EVENT)
            app->event_acked = true;
        break;
    case CB_NODE_UNDELIVERED:
        fprintf(stderr, "example_node: frame seq %llu undelivered\n", (unsigned long long)arg);
        break;
    case CB_NODE_FW_COMMITTED: fprintf(stderr, "example_node: would reboot now\n"); break;
    case CB_NODE_TIME: break;
    }
}

static int open_serial(const char *path)
{
    int fd = open(path, O_RDWR | O_NOCTTY | O_NONBLOCK);
    struct termios tio;
    if (fd < 0) {
        perror(path);
        return -1;
    }
    if (tcgetattr(fd, &tio) == 0) {
        cfmakeraw(&tio);
        tio.c_cflag &= (tcflag_t)~(CSTOPB | PARENB | CSIZE | CRTSCTS);
        tio.c_cflag |= CS8 | CLOCAL | CREAD;
        tio.c_iflag &= (tcflag_t)~(IXON | IXOFF | IXANY);
        tio.c_cc[VMIN] = 0;
        tio.c_cc[VTIME] = 0;
        cfsetispeed(&tio, B115200);
        cfsetospeed(&tio, B115200);
        if (tcsetattr(fd, TCSANOW, &tio) != 0)
            perror("tcsetattr");
        tcflush(fd, TCIOFLUSH);
    } else {
        fprintf(stderr, "example_node: %s is not a tty, using it as is\n", path);
    }
    return fd;
}

static size_t points_payload(uint8_t *buf, size_t cap, int16_t temp_x10, bool door)
{
    cb_writer_t w;
    cb_value_t t = cb_value_int16(temp_x10), d = cb_value_bool(door);
    cb_writer_init(&w, buf, cap);
    cb_w_u8(&w, 2);
    cb_w_point(&w, 0, &t);
    cb_w_point(&w, 1, &d);
    return w.err ? 0 : w.len;
}

int main(int argc, char **argv)
{
    static cb_node_t node;
    static app_t app;
    cb_node_config_t cfg;
    const char *device = NULL;
    struct sigaction sa;

    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--once") == 0)
            app.once = true;
        else if (strcmp(argv[i], "--fw-out") == 0 && i + 1 < argc)
            app.fw_out = argv[++i];
        else if (!device && argv[i][0] != '-')
            device = argv[i];
        else {
            fprintf(stderr, "usage: %s DEVICE [--once] [--fw-out FILE]\n", argv[0]);
            return 2;
        }
    }
    if (!device) {
        fprintf(stderr, "usage: %s DEVICE [--once] [--fw-out FILE]\n", argv[0]);
        return 2;
    }
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    app.fd = open_serial(device);
    if (app.fd < 0)
        return 1;
    memset(&cfg, 0, sizeof cfg);
    cfg.ctx = &app;
    cfg.write = write_all;
    cfg.now_ms = now_ms;
    cfg.on_action = on_action;
    cfg.flash = on_flash;
    cfg.on_event = on_event;
    memcpy(cfg.uid, "\xc0\xde\x00\x00\x00\x00\x00\x01", 8);
    cfg.model = "c-example-node";
    cfg.fw_version = "1.0.0";
    cfg.fw_slot_size = FW_SLOT;
    cb_node_init(&node, &cfg);
    {
        static const uint8_t flush = 0x00; /* end any noise on the line */
        write_all(&app, &flush, 1);
    }

    uint32_t last_data = now_ms(NULL), last_event = last_data;
    int16_t temp = 215;
    bool was_online = false;
    while (!stop_requested) {
        struct pollfd pfd = {app.fd, POLLIN, 0};
        int r = poll(&pfd, 1, 10);
        if (r > 0 && (pfd.revents & POLLIN)) {
            uint8_t buf[256];
            ssize_t n = read(app.fd, buf, sizeof buf);
            for (ssize_t i = 0; i < n; i++)
                cb_node_feed(&node, buf[i]);
            if (n == 0 && !isatty(app.fd))
                usleep(10000);
        } else if (r > 0 && (pfd.revents & (POLLHUP | POLLERR | POLLNVAL))) {
            usleep(10000);
        }
        cb_node_poll(&node);
        uint32_t now = now_ms(NULL);
        if (cb_node_online(&node)) {
            if (!was_online) { /* first reading / event right after WELCOME */
                last_data = now - 1000u;
                last_event = now - 5000u;
            }
            if ((uint32_t)(now - last_data) >= 1000u) {
                uint8_t p[32];
                size_t len = points_payload(p, sizeof p, temp, app.door);
                temp = (int16_t)(temp >= 260 ? 200 : temp + 1);
                cb_node_send_data(&node, p, len);
                last_data = now;
            }
            if ((uint32_t)(now - last_event) >= 5000u) {
                uint8_t p[8];
                cb_writer_t w;
                cb_value_t alarm = cb_value_bool(true);
                cb_writer_init(&w, p, sizeof p);
                cb_w_u8(&w, 1);
                cb_w_point(&w, 2, &alarm);
                if (!cb_node_send_event(&node, p, w.len))
                    fprintf(stderr, "example_node: event queue full\n");
                last_event = now;
            }
        }
        was_online = cb_node_online(&node);
        if (app.once && app.event_acked)
            break;
    }
    close(app.fd);
    fprintf(stderr, "example_node: exiting\n");
    return 0;
}
