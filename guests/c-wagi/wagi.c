/* A WAGI handler in C (wasi-libc): the request arrives CGI-style, the response leaves as CGI
 * headers, a blank line and the body on stdout. The behaviour is chosen by PATH_INFO. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *env(const char *name) {
    const char *v = getenv(name);
    return v ? v : "";
}

int main(int argc, char **argv) {
    const char *path = env("PATH_INFO");
    if (strcmp(path, "/status") == 0) {
        printf("status: 404 Not Found\ncontent-type: text/plain\n\nnothing at %s\n", path);
        return 0;
    }
    if (strcmp(path, "/redirect") == 0) {
        printf("location: /elsewhere\n\n");
        return 0;
    }
    if (strcmp(path, "/malformed") == 0) {
        printf("this is not a header line\n\nbody\n");
        return 0;
    }
    if (strcmp(path, "/exit") == 0) {
        printf("content-type: text/plain\n\nabout to fail\n");
        return 3;
    }
    if (strcmp(path, "/loop") == 0) {
        volatile unsigned long n = 0;
        for (;;) n++;
    }
    if (strcmp(path, "/args") == 0) {
        printf("content-type: text/plain\n\n");
        for (int i = 0; i < argc; i++) printf("%s\n", argv[i]);
        return 0;
    }
    /* Echo: metadata in headers, the request body back as the response body. */
    printf("content-type: application/octet-stream\n");
    printf("x-method: %s\n", env("REQUEST_METHOD"));
    printf("x-path-info: %s\n", path);
    printf("x-query: %s\n", env("QUERY_STRING"));
    printf("x-script-name: %s\n", env("SCRIPT_NAME"));
    printf("x-content-length: %s\n", env("CONTENT_LENGTH"));
    printf("x-header-custom: %s\n", env("HTTP_X_CUSTOM"));
    printf("x-server-name: %s\n\n", env("SERVER_NAME"));
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, stdin)) > 0) fwrite(buf, 1, n, stdout);
    return 0;
}
