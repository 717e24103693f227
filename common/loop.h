#ifndef HW_COMMON_LOOP_H
#define HW_COMMON_LOOP_H

/* A small epoll event loop, one per process, owning the long-lived connections
 * (Noise sessions in headwater, DERP clients in hwrelay). Only the loop's own thread
 * touches fds and timers; other threads hand work over with hw_loop_post(). */

#include <stdbool.h>
#include <stdint.h>

struct hw_loop;
struct hw_timer;

/* events: HW_EV_READ / HW_EV_WRITE (as reported), plus HW_EV_ERROR on EPOLLERR/HUP. */
enum { HW_EV_READ = 1, HW_EV_WRITE = 2, HW_EV_ERROR = 4 };
typedef void (*hw_fd_cb)(struct hw_loop *loop, int fd, int events, void *arg);
typedef void (*hw_timer_cb)(struct hw_loop *loop, struct hw_timer *t, void *arg);
typedef void (*hw_post_cb)(struct hw_loop *loop, void *arg);

struct hw_loop *hw_loop_new(void);
void hw_loop_free(struct hw_loop *loop);

/* Watches fd for the given HW_EV_READ|HW_EV_WRITE interest (level-triggered). */
int hw_loop_add(struct hw_loop *loop, int fd, int interest, hw_fd_cb cb, void *arg);
int hw_loop_modify(struct hw_loop *loop, int fd, int interest);
/* Safe to call from inside the fd's own callback; pending events for it are dropped. */
void hw_loop_remove(struct hw_loop *loop, int fd);

/* One-shot timer after ms milliseconds. The handle stays valid until the callback has
 * run or hw_timer_cancel() is called; never both. */
struct hw_timer *hw_timer_start(struct hw_loop *loop, int64_t ms, hw_timer_cb cb, void *arg);
void hw_timer_cancel(struct hw_loop *loop, struct hw_timer *t);

/* Thread-safe: runs cb(arg) on the loop thread soon. */
void hw_loop_post(struct hw_loop *loop, hw_post_cb cb, void *arg);

/* Runs until hw_loop_stop() (from any thread); it can be run again afterwards. */
void hw_loop_run(struct hw_loop *loop);
void hw_loop_stop(struct hw_loop *loop);
int64_t hw_loop_now_ms(struct hw_loop *loop);   /* monotonic, cached per iteration */

#endif
