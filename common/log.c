#include "common/log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static enum hw_log_level current_level = HW_LOG_INFO;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

void hw_log_set_level(enum hw_log_level level) { current_level = level; }
enum hw_log_level hw_log_get_level(void) { return current_level; }

int hw_log_parse_level(const char *name, enum hw_log_level *out)
{
    static const struct { const char *name; enum hw_log_level level; } names[] = {
        {"trace", HW_LOG_DEBUG}, {"debug", HW_LOG_DEBUG}, {"info", HW_LOG_INFO},
        {"warn", HW_LOG_WARN},   {"warning", HW_LOG_WARN}, {"error", HW_LOG_ERROR},
        {"fatal", HW_LOG_ERROR}, {"panic", HW_LOG_ERROR},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcasecmp(name, names[i].name) == 0) {
            *out = names[i].level;
            return 0;
        }
    }
    return -1;
}

const char *hw_log_level_name(enum hw_log_level level)
{
    switch (level) {
    case HW_LOG_DEBUG: return "debug";
    case HW_LOG_INFO: return "info";
    case HW_LOG_WARN: return "warn";
    default: return "error";
    }
}

void hw_log(enum hw_log_level level, const char *fmt, ...)
{
    static const char *tags[] = {"DBG", "INF", "WRN", "ERR"};
    if (level < current_level)
        return;
    char stamp[32];
    time_t now = time(NULL);
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%SZ", &tm);

    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);

    /* One fprintf under a lock so lines from several threads never interleave. */
    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s %s %s\n", stamp, tags[level], line);
    fflush(stderr);
    pthread_mutex_unlock(&log_lock);
}
