/* Writes log lines with a UTC timestamp; one fprintf per line so threads don't interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

static volatile int max_level = LOG_INFO;
static volatile int line_format = LOG_FORMAT_TEXT;
static const char *const names[] = {"ERROR", "WARN", "INFO", "DEBUG"};

void
log_set_level(enum log_level level)
{
  max_level = level;
}

int
log_parse_level(const char *s)
{
  static const char *const lower[] = {"error", "warn", "info", "debug"};
  for (int i = 0; i < 4; i++) {
    if (strcmp(s, lower[i]) == 0) {
      return i;
    }
  }
  return -1;
}

void
log_set_format(enum log_format format)
{
  line_format = format;
}

int
log_parse_format(const char *s)
{
  if (strcmp(s, "text") == 0) {
    return LOG_FORMAT_TEXT;
  }
  if (strcmp(s, "json") == 0) {
    return LOG_FORMAT_JSON;
  }
  return -1;
}

/* A writer into a fixed buffer that truncates instead of overflowing. */
struct jbuf {
  char *p;
  size_t cap, len;
};

static void
jput(struct jbuf *b, const char *s, size_t n)
{
  for (size_t i = 0; i < n && b->len + 1 < b->cap; i++) {
    b->p[b->len++] = s[i];
  }
  b->p[b->len] = '\0';
}

/* Appends |s| (|n| bytes) as a JSON string, quotes included. */
static void
jstr(struct jbuf *b, const char *s, size_t n)
{
  jput(b, "\"", 1);
  for (size_t i = 0; i < n; i++) {
    unsigned char c = (unsigned char)s[i];
    char esc[8];
    if (c == '"' || c == '\\') {
      esc[0] = '\\';
      esc[1] = (char)c;
      jput(b, esc, 2);
    } else if (c < 0x20 || c == 0x7f) {
      snprintf(esc, sizeof(esc), "\\u%04x", c);
      jput(b, esc, 6);
    } else {
      jput(b, (const char *)&c, 1);
    }
  }
  jput(b, "\"", 1);
}

static void
jmember(struct jbuf *b, const char *k, size_t kl, const char *v, size_t vl)
{
  jput(b, ",", 1);
  jstr(b, k, kl);
  jput(b, ":", 1);
  jstr(b, v, vl);
}

static int
is_key_char(char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '_' || c == '.' || c == '-';
}

size_t
log_json_line(char *out, size_t cap, const char *time, const char *level, const char *msg)
{
  struct jbuf b = {out, cap, 0};
  char rest[1024];
  size_t rl = 0;
  if (cap == 0) {
    return 0;
  }
  out[0] = '\0';
  jput(&b, "{\"time\":", 8);
  jstr(&b, time, strlen(time));
  jput(&b, ",\"level\":", 9);
  jstr(&b, level, strlen(level));
  const char *p = msg;
  while (*p != '\0') {
    while (*p == ' ') {
      p++;
    }
    if (*p == '\0') {
      break;
    }
    const char *k = p;
    while (is_key_char(*p)) {
      p++;
    }
    const char *v, *vend;
    if (p > k && *p == '=') {
      size_t kl = (size_t)(p - k);
      p++;
      if (*p == '"') {
        /* A quoted value runs to the next quote that ends a token. */
        v = ++p;
        while (*p != '\0' && !(*p == '"' && (p[1] == ' ' || p[1] == '\0'))) {
          p++;
        }
        vend = p;
        if (*p == '"') {
          p++;
        }
      } else {
        v = p;
        while (*p != '\0' && *p != ' ') {
          p++;
        }
        vend = p;
      }
      jmember(&b, k, kl, v, (size_t)(vend - v));
      continue;
    }
    /* Free text: keep it, in order, in "msg". */
    p = k;
    while (*p != '\0' && *p != ' ') {
      p++;
    }
    size_t n = (size_t)(p - k);
    if (rl > 0 && rl < sizeof(rest) - 1) {
      rest[rl++] = ' ';
    }
    if (n > sizeof(rest) - 1 - rl) {
      n = sizeof(rest) - 1 - rl;
    }
    memcpy(rest + rl, k, n);
    rl += n;
  }
  if (rl > 0) {
    jmember(&b, "msg", 3, rest, rl);
  }
  jput(&b, "}", 1);
  return b.len;
}

void
log_msg(enum log_level level, const char *fmt, ...)
{
  if ((int)level > max_level) {
    return;
  }
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof(msg), fmt, ap);
  va_end(ap);
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[32], when[64];
  strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(when, sizeof(when), "%s.%03ldZ", ts, (long)(tv.tv_usec / 1000));
  if (line_format == LOG_FORMAT_JSON) {
    char line[4096];
    log_json_line(line, sizeof(line), when, names[level], msg);
    fprintf(stderr, "%s\n", line);
    return;
  }
  fprintf(stderr, "%s %s kmsd: %s\n", when, names[level], msg);
}
