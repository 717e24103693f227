#include "common/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"

/* fd -> watcher. Indexed directly by fd: fds are small dense integers, and this keeps
 * the lookup on the hot path to one array access. */
struct watcher {
    hw_fd_cb cb;
    void *arg;
    uint32_t generation;   /* bumped on remove so stale events in one batch are ignored */
    bool active;
};

/* Timers live in a binary min-heap ordered by deadline; a handle knows its index so
 * cancel is O(log n). */
struct hw_timer {
    int64_t deadline;
    uint64_t seq;          /* FIFO order among equal deadlines */
    size_t index;
    hw_timer_cb cb;
    void *arg;
};

struct posted {
    hw_post_cb cb;
    void *arg;
    struct posted *next;
};

struct hw_loop {
    int epfd;
    int wakefd;
    volatile int stop;
    int64_t now;
    struct watcher *watchers;
    size_t n_watchers;
    struct hw_timer **heap;
    size_t heap_len, heap_cap;
    uint64_t timer_seq;
    pthread_mutex_t post_lock;
    struct posted *post_head, *post_tail;
};

static uint64_t pack_event_data(int fd, uint32_t generation)
{
    return (uint64_t)(uint32_t)fd | (uint64_t)generation << 32;
}

struct hw_loop *hw_loop_new(void)
{
    struct hw_loop *loop = hw_calloc(1, sizeof *loop);
    loop->epfd = epoll_create1(EPOLL_CLOEXEC);
    loop->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (loop->epfd < 0 || loop->wakefd < 0) {
        log_error("event loop: %s", strerror(errno));
        hw_loop_free(loop);
        return NULL;
    }
    pthread_mutex_init(&loop->post_lock, NULL);
    struct epoll_event ev = {.events = EPOLLIN, .data.u64 = UINT64_MAX};
    epoll_ctl(loop->epfd, EPOLL_CTL_ADD, loop->wakefd, &ev);
    loop->now = hw_now_ms_mono();
    return loop;
}

void hw_loop_free(struct hw_loop *loop)
{
    if (!loop)
        return;
    if (loop->epfd >= 0)
        close(loop->epfd);
    if (loop->wakefd >= 0)
        close(loop->wakefd);
    for (size_t i = 0; i < loop->heap_len; i++)
        free(loop->heap[i]);
    free(loop->heap);
    free(loop->watchers);
    for (struct posted *p = loop->post_head, *next; p; p = next) {
        next = p->next;
        free(p);
    }
    pthread_mutex_destroy(&loop->post_lock);
    free(loop);
}

static uint32_t to_epoll(int interest)
{
    uint32_t e = 0;
    if (interest & HW_EV_READ)
        e |= EPOLLIN | EPOLLRDHUP;
    if (interest & HW_EV_WRITE)
        e |= EPOLLOUT;
    return e;
}

int hw_loop_add(struct hw_loop *loop, int fd, int interest, hw_fd_cb cb, void *arg)
{
    if (fd < 0)
        return -1;
    if ((size_t)fd >= loop->n_watchers) {
        size_t n = loop->n_watchers ? loop->n_watchers : 64;
        while (n <= (size_t)fd)
            n *= 2;
        struct watcher *grown = realloc(loop->watchers, n * sizeof *grown);
        if (!grown)
            return -1;
        memset(grown + loop->n_watchers, 0, (n - loop->n_watchers) * sizeof *grown);
        loop->watchers = grown;
        loop->n_watchers = n;
    }
    struct watcher *w = &loop->watchers[fd];
    w->cb = cb;
    w->arg = arg;
    w->active = true;
    struct epoll_event ev = {.events = to_epoll(interest), .data.u64 = pack_event_data(fd, w->generation)};
    if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        w->active = false;
        return -1;
    }
    return 0;
}

int hw_loop_modify(struct hw_loop *loop, int fd, int interest)
{
    if (fd < 0 || (size_t)fd >= loop->n_watchers || !loop->watchers[fd].active)
        return -1;
    struct epoll_event ev = {.events = to_epoll(interest),
                             .data.u64 = pack_event_data(fd, loop->watchers[fd].generation)};
    return epoll_ctl(loop->epfd, EPOLL_CTL_MOD, fd, &ev);
}

void hw_loop_remove(struct hw_loop *loop, int fd)
{
    if (fd < 0 || (size_t)fd >= loop->n_watchers || !loop->watchers[fd].active)
        return;
    epoll_ctl(loop->epfd, EPOLL_CTL_DEL, fd, NULL);
    loop->watchers[fd].active = false;
    loop->watchers[fd].generation++;
}

/* ---- timers ---- */

static bool timer_before(const struct hw_timer *a, const struct hw_timer *b)
{
    return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
}

static void heap_swap(struct hw_loop *loop, size_t i, size_t j)
{
    struct hw_timer *t = loop->heap[i];
    loop->heap[i] = loop->heap[j];
    loop->heap[j] = t;
    loop->heap[i]->index = i;
    loop->heap[j]->index = j;
}

static void heap_up(struct hw_loop *loop, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!timer_before(loop->heap[i], loop->heap[parent]))
            break;
        heap_swap(loop, i, parent);
        i = parent;
    }
}

static void heap_down(struct hw_loop *loop, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        if (l < loop->heap_len && timer_before(loop->heap[l], loop->heap[best]))
            best = l;
        if (r < loop->heap_len && timer_before(loop->heap[r], loop->heap[best]))
            best = r;
        if (best == i)
            return;
        heap_swap(loop, i, best);
        i = best;
    }
}

static void heap_remove_at(struct hw_loop *loop, size_t i)
{
    loop->heap_len--;
    if (i != loop->heap_len) {
        loop->heap[i] = loop->heap[loop->heap_len];
        loop->heap[i]->index = i;
        heap_down(loop, i);
        heap_up(loop, i);
    }
}

struct hw_timer *hw_timer_start(struct hw_loop *loop, int64_t ms, hw_timer_cb cb, void *arg)
{
    if (loop->heap_len == loop->heap_cap) {
        size_t cap = loop->heap_cap ? loop->heap_cap * 2 : 64;
        struct hw_timer **grown = realloc(loop->heap, cap * sizeof *grown);
        if (!grown)
            return NULL;
        loop->heap = grown;
        loop->heap_cap = cap;
    }
    struct hw_timer *t = hw_malloc(sizeof *t);
    t->deadline = hw_now_ms_mono() + (ms > 0 ? ms : 0);
    t->seq = loop->timer_seq++;
    t->cb = cb;
    t->arg = arg;
    t->index = loop->heap_len;
    loop->heap[loop->heap_len++] = t;
    heap_up(loop, t->index);
    return t;
}

void hw_timer_cancel(struct hw_loop *loop, struct hw_timer *t)
{
    if (!t)
        return;
    heap_remove_at(loop, t->index);
    free(t);
}

static int next_timeout_ms(struct hw_loop *loop)
{
    if (loop->heap_len == 0)
        return 1000;
    int64_t wait = loop->heap[0]->deadline - hw_now_ms_mono();
    if (wait < 0)
        return 0;
    return wait > 1000 ? 1000 : (int)wait;
}

static void run_due_timers(struct hw_loop *loop)
{
    int64_t now = hw_now_ms_mono();
    /* Timers started by a callback with ms=0 wait for the next iteration, so a timer
     * that re-arms itself cannot starve the fds. */
    uint64_t seq_limit = loop->timer_seq;
    while (loop->heap_len > 0 && loop->heap[0]->deadline <= now && loop->heap[0]->seq < seq_limit) {
        struct hw_timer *t = loop->heap[0];
        heap_remove_at(loop, 0);
        t->cb(loop, t, t->arg);
        free(t);
    }
}

/* ---- cross-thread posts ---- */

void hw_loop_post(struct hw_loop *loop, hw_post_cb cb, void *arg)
{
    struct posted *p = hw_malloc(sizeof *p);
    p->cb = cb;
    p->arg = arg;
    p->next = NULL;
    pthread_mutex_lock(&loop->post_lock);
    if (loop->post_tail)
        loop->post_tail->next = p;
    else
        loop->post_head = p;
    loop->post_tail = p;
    pthread_mutex_unlock(&loop->post_lock);
    uint64_t one = 1;
    ssize_t n = write(loop->wakefd, &one, sizeof one);
    (void)n; /* EAGAIN means a wake-up is already pending: enough. */
}

static void run_posted(struct hw_loop *loop)
{
    uint64_t drained;
    ssize_t n = read(loop->wakefd, &drained, sizeof drained);
    (void)n;
    pthread_mutex_lock(&loop->post_lock);
    struct posted *p = loop->post_head;
    loop->post_head = loop->post_tail = NULL;
    pthread_mutex_unlock(&loop->post_lock);
    while (p) {
        struct posted *next = p->next;
        p->cb(loop, p->arg);
        free(p);
        p = next;
    }
}

void hw_loop_stop(struct hw_loop *loop)
{
    loop->stop = 1;
    uint64_t one = 1;
    ssize_t n = write(loop->wakefd, &one, sizeof one);
    (void)n;
}

int64_t hw_loop_now_ms(struct hw_loop *loop) { return loop->now; }

void hw_loop_run(struct hw_loop *loop)
{
    struct epoll_event events[256];
    while (!loop->stop) {
        int n = epoll_wait(loop->epfd, events, (int)HW_ARRAY_LEN(events), next_timeout_ms(loop));
        if (n < 0 && errno != EINTR) {
            log_error("event loop: epoll_wait: %s", strerror(errno));
            break;
        }
        loop->now = hw_now_ms_mono();
        for (int i = 0; i < n; i++) {
            uint64_t data = events[i].data.u64;
            if (data == UINT64_MAX) {
                run_posted(loop);
                continue;
            }
            int fd = (int)(uint32_t)data;
            uint32_t generation = (uint32_t)(data >> 32);
            if ((size_t)fd >= loop->n_watchers)
                continue;
            struct watcher *w = &loop->watchers[fd];
            if (!w->active || w->generation != generation)
                continue;
            int ev = 0;
            if (events[i].events & (EPOLLIN | EPOLLRDHUP))
                ev |= HW_EV_READ;
            if (events[i].events & EPOLLOUT)
                ev |= HW_EV_WRITE;
            if (events[i].events & (EPOLLERR | EPOLLHUP))
                ev |= HW_EV_ERROR | HW_EV_READ;
            w->cb(loop, fd, ev, w->arg);
        }
        run_due_timers(loop);
    }
    loop->stop = 0; /* a later hw_loop_run goes on (tests run a loop in slices) */
}
