/* Structured logging to stderr: one line per event, key=value fields, never secrets. */
#ifndef KMSD_LOG_H
#define KMSD_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* log_set_level sets the most verbose level that is printed (default INFO). */
void log_set_level(enum log_level level);

/* log_parse_level maps "error", "warn", "info", "debug"; returns -1 if unknown. */
int log_parse_level(const char *s);

/*
 * log_msg prints "TIME LEVEL kmsd: MESSAGE". Callers pass key=value pairs in
 * the message and never key bytes, PINs, plaintext or rejected input.
 */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
