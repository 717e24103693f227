#ifndef HW_COMMON_LOG_H
#define HW_COMMON_LOG_H

/* One line per event on stderr: "2026-11-25T19:45:00Z INF message". systemd's
 * journal adds its own time stamp, but tests and `make run` read stderr directly. */
enum hw_log_level { HW_LOG_DEBUG = 0, HW_LOG_INFO, HW_LOG_WARN, HW_LOG_ERROR };

void hw_log_set_level(enum hw_log_level level);
enum hw_log_level hw_log_get_level(void);
/* "debug" | "info" | "warn" | "error" (also "trace" -> debug, "fatal"/"panic" -> error,
 * the values Headscale accepts). Returns -1 for anything else. */
int hw_log_parse_level(const char *name, enum hw_log_level *out);
const char *hw_log_level_name(enum hw_log_level level);

void hw_log(enum hw_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#define log_debug(...) hw_log(HW_LOG_DEBUG, __VA_ARGS__)
#define log_info(...)  hw_log(HW_LOG_INFO, __VA_ARGS__)
#define log_warn(...)  hw_log(HW_LOG_WARN, __VA_ARGS__)
#define log_error(...) hw_log(HW_LOG_ERROR, __VA_ARGS__)

#endif
