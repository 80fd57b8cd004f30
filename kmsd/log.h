/* Structured logging to stderr: one line per event, key=value fields, never secrets. */
#ifndef KMSD_LOG_H
#define KMSD_LOG_H

#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

/* Line formats: readable text (default) or one JSON object per line. */
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };

/* log_set_level sets the most verbose level that is printed (default INFO). */
void log_set_level(enum log_level level);

/* log_parse_level maps "error", "warn", "info", "debug"; returns -1 if unknown. */
int log_parse_level(const char *s);

/* log_set_format picks the line format (config key log_format). */
void log_set_format(enum log_format format);

/* log_parse_format maps "text" and "json"; returns -1 if unknown. */
int log_parse_format(const char *s);

/*
 * log_msg prints one line: "TIME LEVEL kmsd: MESSAGE" in text format, or a
 * JSON object {"time":..,"level":..,"<key>":"<value>",..} in JSON format.
 * Callers write MESSAGE as space-separated key=value pairs (a value with
 * spaces in double quotes) and never put key bytes, PINs, plaintext or
 * rejected input in it.
 */
void log_msg(enum log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * log_json_line turns one message into a JSON object (no newline) in |out|
 * (always NUL-terminated, truncated to |cap|): "time" and "level" first, then
 * every key=value pair of |msg| as a string member, in order. Text that is not
 * a key=value pair is collected into a "msg" member. Returns the length.
 * Exposed for tests.
 */
size_t log_json_line(char *out, size_t cap, const char *time, const char *level,
                     const char *msg);

#endif
