/* derper's /bootstrap-dns: the addresses of configured names, so a client whose own
 * DNS is broken can still find its control server. A thread resolves the names every
 * 10 minutes (lookups block, and the loop must not); the loop thread answers from the
 * last result under a mutex.
 *
 * As in derper: the published answer is {"name":["ip",...]} for every name that
 * resolved (addresses shuffled per refresh so clients do not all prefer one family),
 * "null" when none did, and an empty body before the first refresh or with no names.
 * ?q=NAME for a name on the unpublished list answers just that name. */
#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <pthread.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"
#include "relay/relay.h"

#define REFRESH_SECONDS (10 * 60)

struct bootstrap_dns {
    char *published_names, *unpublished_names;   /* copies of the comma-separated lists */
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;
    /* Under mu: */
    char *published_json;        /* NULL until the first refresh */
    json_t *unpublished;         /* name -> [ip...] */
};

/* One name's addresses, IPv4 and IPv6, each once, in random order; NULL if the lookup failed. */
static json_t *lookup(const char *name)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(name, NULL, &hints, &res);
    if (rc != 0) {
        log_warn("hwrelay: bootstrap DNS lookup \"%s\": %s", name, gai_strerror(rc));
        return NULL;
    }
    json_t *ips = json_array();
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        char text[INET6_ADDRSTRLEN] = "";
        if (ai->ai_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)ai->ai_addr)->sin_addr, text, sizeof text);
        else if (ai->ai_family == AF_INET6)
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr, text, sizeof text);
        if (!text[0])
            continue;
        bool seen = false;
        for (size_t i = 0; i < json_array_size(ips) && !seen; i++)
            seen = strcmp(json_string_value(json_array_get(ips, i)), text) == 0;
        if (!seen)
            json_array_append_new(ips, json_string(text));
    }
    freeaddrinfo(res);
    for (size_t i = json_array_size(ips); i > 1; i--) {
        size_t j = randombytes_uniform((uint32_t)i);
        json_t *a = json_incref(json_array_get(ips, i - 1));
        json_array_set(ips, i - 1, json_array_get(ips, j));
        json_array_set_new(ips, j, a);
    }
    return ips;
}

/* name -> [ip...] for the names that resolved; NULL when none did. */
static json_t *resolve_list(const char *list)
{
    json_t *map = NULL;
    char *copy = hw_strdup(list), *save = NULL;
    for (char *name = strtok_r(copy, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        json_t *ips = lookup(name);
        if (!ips)
            continue;
        if (!map)
            map = json_object();
        json_object_set_new(map, name, ips);
    }
    free(copy);
    return map;
}

static void *refresh_thread(void *arg)
{
    struct bootstrap_dns *b = arg;
    pthread_mutex_lock(&b->mu);
    while (!b->stop) {
        pthread_mutex_unlock(&b->mu);
        char *published = NULL;
        json_t *unpublished = NULL;
        if (b->published_names) {
            json_t *map = resolve_list(b->published_names);
            /* A map with no names that resolved is JSON null, as Go marshals a nil map. */
            published = json_dumps(map ? map : json_null(), JSON_INDENT(1) | JSON_SORT_KEYS | JSON_ENCODE_ANY);
            json_decref(map);
        }
        if (b->unpublished_names)
            unpublished = resolve_list(b->unpublished_names);
        pthread_mutex_lock(&b->mu);
        if (published) {
            free(b->published_json);
            b->published_json = published;
        }
        json_decref(b->unpublished);
        b->unpublished = unpublished;
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += REFRESH_SECONDS;
        while (!b->stop && pthread_cond_timedwait(&b->cv, &b->mu, &until) != ETIMEDOUT) {
        }
    }
    pthread_mutex_unlock(&b->mu);
    return NULL;
}

int bootstrap_dns_start(struct relay *r)
{
    const char *pub = r->cfg.bootstrap_dns_names, *unpub = r->cfg.unpublished_bootstrap_dns_names;
    if ((!pub || !*pub) && (!unpub || !*unpub))
        return 0;
    if (unpub && strchr(unpub, '/')) {
        log_error("hwrelay: -unpublished-bootstrap-dns-names %s: NAME/TXT-RECORD rollout entries are "
                  "not supported; list plain names", unpub);
        return -1;
    }
    struct bootstrap_dns *b = hw_calloc(1, sizeof *b);
    b->published_names = pub && *pub ? hw_strdup(pub) : NULL;
    b->unpublished_names = unpub && *unpub ? hw_strdup(unpub) : NULL;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    int rc = pthread_create(&b->thread, NULL, refresh_thread, b);
    if (rc != 0) {
        log_error("hwrelay: cannot start the bootstrap DNS thread: %s", strerror(rc));
        pthread_mutex_destroy(&b->mu);
        pthread_cond_destroy(&b->cv);
        free(b->published_names);
        free(b->unpublished_names);
        free(b);
        return -1;
    }
    r->bootstrap = b;
    log_info("hwrelay: /bootstrap-dns serves %s%s%s", b->published_names ? b->published_names : "no published names",
             b->unpublished_names ? ", and on request " : "", b->unpublished_names ? b->unpublished_names : "");
    return 0;
}

void bootstrap_dns_stop(struct relay *r)
{
    struct bootstrap_dns *b = r->bootstrap;
    if (!b)
        return;
    pthread_mutex_lock(&b->mu);
    b->stop = true;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    /* A lookup in flight finishes first; getaddrinfo has its own timeouts. */
    pthread_join(b->thread, NULL);
    pthread_mutex_destroy(&b->mu);
    pthread_cond_destroy(&b->cv);
    free(b->published_json);
    json_decref(b->unpublished);
    free(b->published_names);
    free(b->unpublished_names);
    free(b);
    r->bootstrap = NULL;
}

char *bootstrap_dns_answer(struct relay *r, const char *q)
{
    struct bootstrap_dns *b = r->bootstrap;
    if (!b)
        return NULL;
    char *out = NULL;
    pthread_mutex_lock(&b->mu);
    json_t *ips = q && *q && b->unpublished ? json_object_get(b->unpublished, q) : NULL;
    if (ips && json_array_size(ips) > 0) {
        json_t *one = json_object();
        json_object_set(one, q, ips);
        out = json_dumps(one, JSON_INDENT(1));
        json_decref(one);
    } else if (b->published_json) {
        out = hw_strdup(b->published_json);
    }
    pthread_mutex_unlock(&b->mu);
    return out;
}
