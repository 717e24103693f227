#include <pthread.h>
#include <unistd.h>

#include "common/util.h"
#include "common/loop.h"
#include "tests/unit/testlib.h"

static char order[16];
static size_t order_len;

static void record_timer(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    order[order_len++] = *(const char *)arg;
    if (order_len == 3)
        hw_loop_stop(loop);
}

static void timers_fire_in_deadline_order(void)
{
    struct hw_loop *loop = hw_loop_new();
    order_len = 0;
    hw_timer_start(loop, 30, record_timer, "c");
    hw_timer_start(loop, 10, record_timer, "a");
    struct hw_timer *cancelled = hw_timer_start(loop, 15, record_timer, "x");
    hw_timer_start(loop, 20, record_timer, "b");
    hw_timer_cancel(loop, cancelled);
    int64_t start = hw_now_ms_mono();
    hw_loop_run(loop);
    int64_t took = hw_now_ms_mono() - start;
    hw_loop_free(loop);
    order[order_len] = '\0';
    CHECK_STR(order, "abc");
    CHECK(took >= 25 && took < 2000, "took %lld ms", (long long)took);
}

static int posted_count;

static void count_post(struct hw_loop *loop, void *arg)
{
    if (++posted_count == 4000)
        hw_loop_stop(loop);
}

static void *poster(void *arg)
{
    for (int i = 0; i < 1000; i++)
        hw_loop_post(arg, count_post, NULL);
    return NULL;
}

static void posts_from_other_threads_all_run(void)
{
    struct hw_loop *loop = hw_loop_new();
    posted_count = 0;
    pthread_t threads[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&threads[i], NULL, poster, loop);
    hw_loop_run(loop);
    for (int i = 0; i < 4; i++)
        pthread_join(threads[i], NULL);
    hw_loop_free(loop);
    CHECK_INT(posted_count, 4000);
}

static int reads_seen;

static void on_pipe(struct hw_loop *loop, int fd, int events, void *arg)
{
    char buf[16];
    if (events & HW_EV_READ) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n > 0)
            reads_seen++;
        /* Removing from inside the callback must be safe. */
        hw_loop_remove(loop, fd);
        hw_loop_stop(loop);
    }
}

static void write_after(struct hw_loop *loop, struct hw_timer *t, void *arg)
{
    ssize_t n = write(*(int *)arg, "x", 1);
    (void)n;
}

static void fd_readiness_and_remove_in_callback(void)
{
    int p[2];
    CHECK(pipe(p) == 0, "pipe");
    struct hw_loop *loop = hw_loop_new();
    reads_seen = 0;
    CHECK(hw_loop_add(loop, p[0], HW_EV_READ, on_pipe, NULL) == 0, "add");
    hw_timer_start(loop, 5, write_after, &p[1]);
    hw_loop_run(loop);
    hw_loop_free(loop);
    close(p[0]);
    close(p[1]);
    CHECK_INT(reads_seen, 1);
}

int main(void)
{
    RUN(timers_fire_in_deadline_order);
    RUN(posts_from_other_threads_all_run);
    RUN(fd_readiness_and_remove_in_callback);
    return TEST_MAIN_END();
}
