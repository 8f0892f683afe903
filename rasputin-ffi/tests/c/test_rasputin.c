/*
 * C tests of librasputin against a real local cluster (RASPUTIN_PEERS,
 * default 127.0.0.1:8888, and RASPUTIN_PIDS, the nodes' pids, which the
 * retry test stops and resumes). They cover every call and every error
 * path, and run under valgrind in ci/test.sh, which fails on any error or leak.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rasputin.h"

static int failures = 0;
static int passes = 0;

#define CHECK(condition)                                                      \
    do {                                                                      \
        if (condition) {                                                      \
            passes++;                                                         \
        } else {                                                              \
            failures++;                                                       \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #condition); \
        }                                                                     \
    } while (0)

#define BYTES(text) ((const uint8_t *)(text)), strlen(text)

static const char *peers(void) {
    const char *from_environment = getenv("RASPUTIN_PEERS");
    return from_environment ? from_environment : "127.0.0.1:8888";
}

static int value_is(const rasputin_result *result, const char *expected) {
    return result->value_len == strlen(expected) && memcmp(result->value, expected, result->value_len) == 0;
}

/* Runs `call`, which reports into a fresh `error`, and expects it to fail with `expected`. */
#define EXPECT_ERROR(expected, call)                  \
    do {                                              \
        rasputin_error *error = NULL;                 \
        rasputin_status status_of_call = (call);      \
        expect_error(status_of_call, error, expected); \
    } while (0)

/* Expects `status` to be `expected` with a non-empty error of that status, and frees it. */
static void expect_error(rasputin_status status, rasputin_error *error, rasputin_status expected) {
    CHECK(status == expected);
    CHECK(error != NULL);
    CHECK(rasputin_error_status(error) == expected);
    CHECK(strlen(rasputin_error_message(error)) > 0);
    rasputin_error_free(error);
}

static void test_version(void) {
    char expected[32];
    snprintf(expected, sizeof expected, "%d.%d.%d", RASPUTIN_VERSION_MAJOR, RASPUTIN_VERSION_MINOR,
             RASPUTIN_VERSION_PATCH);
    CHECK(strcmp(rasputin_version(), expected) == 0);
}

static void test_client_new_errors(void) {
    rasputin_client *client = NULL;
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_client_new(NULL, 1, &client, &error));
    CHECK(client == NULL);
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_client_new(peers(), 1, NULL, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_INVALID_ARGUMENT, rasputin_client_new("not an address", 1, &client, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_INVALID_ARGUMENT, rasputin_client_new("", 1, &client, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_INVALID_ARGUMENT, rasputin_client_new(peers(), 0, &client, &error));
    /* error_out may be NULL: the status alone reports the failure. */
    CHECK(rasputin_client_new(NULL, 1, &client, NULL) == RASPUTIN_ERROR_NULL_ARGUMENT);
    /* Accessors and frees accept NULL. */
    CHECK(rasputin_error_status(NULL) == RASPUTIN_ERROR_NULL_ARGUMENT);
    CHECK(rasputin_error_server_code(NULL) == 0);
    CHECK(strcmp(rasputin_error_message(NULL), "") == 0);
    rasputin_error_free(NULL);
    rasputin_result_free(NULL);
    rasputin_client_free(NULL);
}

/* The README example's sequence. */
static void test_readme_sequence(rasputin_client *client) {
    rasputin_result *result = NULL;
    rasputin_error *error = NULL;
    CHECK(rasputin_set(client, BYTES("k1"), BYTES("v1"), &result, &error) == RASPUTIN_OK);
    CHECK(result->success && value_is(result, "v1") && result->index > 0);
    rasputin_result_free(result);
    CHECK(rasputin_get(client, BYTES("k1"), &result, &error) == RASPUTIN_OK);
    CHECK(result->success && value_is(result, "v1"));
    rasputin_result_free(result);
    CHECK(rasputin_cas(client, BYTES("k1"), BYTES("v1"), BYTES("v12"), &result, &error) == RASPUTIN_OK);
    CHECK(result->success && value_is(result, "v12"));
    rasputin_result_free(result);
    CHECK(rasputin_cas(client, BYTES("k1"), BYTES("vNever"), BYTES("vNever2"), &result, &error) == RASPUTIN_OK);
    CHECK(!result->success && value_is(result, "v12"));
    rasputin_result_free(result);
    CHECK(rasputin_cas(client, BYTES("k1"), BYTES("v12"), BYTES("v13"), &result, &error) == RASPUTIN_OK);
    CHECK(result->success && value_is(result, "v13"));
    rasputin_result_free(result);
    CHECK(rasputin_del(client, BYTES("k1"), &result, &error) == RASPUTIN_OK);
    CHECK(result->success && value_is(result, "v13"));
    rasputin_result_free(result);
    CHECK(rasputin_get(client, BYTES("k1"), &result, &error) == RASPUTIN_OK);
    CHECK(!result->success && result->value == NULL && result->value_len == 0);
    rasputin_result_free(result);
    CHECK(rasputin_del(client, BYTES("k1"), &result, &error) == RASPUTIN_OK);
    CHECK(!result->success);
    rasputin_result_free(result);
    CHECK(error == NULL);
}

static void test_binary_and_empty_data(rasputin_client *client) {
    const uint8_t key[] = {0, 1, 2, 0};
    const uint8_t value[] = {0, 255, 0};
    rasputin_result *result = NULL;
    CHECK(rasputin_set(client, key, sizeof key, value, sizeof value, &result, NULL) == RASPUTIN_OK);
    rasputin_result_free(result);
    CHECK(rasputin_get(client, key, sizeof key, &result, NULL) == RASPUTIN_OK);
    CHECK(result->value_len == sizeof value && memcmp(result->value, value, sizeof value) == 0);
    rasputin_result_free(result);
    /* A NULL pointer with length 0 is the empty string. */
    CHECK(rasputin_set(client, NULL, 0, NULL, 0, &result, NULL) == RASPUTIN_OK);
    rasputin_result_free(result);
    CHECK(rasputin_get(client, NULL, 0, &result, NULL) == RASPUTIN_OK);
    CHECK(result->success && result->value_len == 0);
    rasputin_result_free(result);
}

/* Issue 13, item 12: found tells an empty value from a missing key. */
static void test_found_tells_empty_from_missing(rasputin_client *client) {
    rasputin_result *result = NULL;
    CHECK(rasputin_set(client, BYTES("empty"), NULL, 0, &result, NULL) == RASPUTIN_OK);
    rasputin_result_free(result);
    CHECK(rasputin_cas(client, BYTES("empty"), BYTES("wrong"), BYTES("new"), &result, NULL) == RASPUTIN_OK);
    CHECK(!result->success && result->found && result->value_len == 0);
    rasputin_result_free(result);
    CHECK(rasputin_cas(client, BYTES("never-set"), BYTES("wrong"), BYTES("new"), &result, NULL) == RASPUTIN_OK);
    CHECK(!result->success && !result->found);
    rasputin_result_free(result);
    CHECK(rasputin_get(client, BYTES("empty"), &result, NULL) == RASPUTIN_OK);
    CHECK(result->success && result->found && result->value_len == 0);
    rasputin_result_free(result);
    CHECK(rasputin_get(client, BYTES("never-set"), &result, NULL) == RASPUTIN_OK);
    CHECK(!result->success && !result->found);
    rasputin_result_free(result);
}

/* Sends `signal` to every pid in RASPUTIN_PIDS (comma-separated). */
static int signal_cluster(int signal) {
    const char *list = getenv("RASPUTIN_PIDS");
    if (list == NULL) return 0;
    int signalled = 0;
    for (const char *at = list; *at != '\0';) {
        char *end = NULL;
        long pid = strtol(at, &end, 10);
        if (end == at) break;
        if (kill((pid_t)pid, signal) == 0) signalled++;
        at = *end == ',' ? end + 1 : end;
    }
    return signalled;
}

/* Issue 13, item 4: a timed-out set carries a token, and retrying with it
 * applies the same request under the same identity once the cluster is back. */
static void test_retry_after_a_timeout(rasputin_client *client) {
    rasputin_result *result = NULL;
    rasputin_error *error = NULL;
    CHECK(rasputin_set(client, BYTES("retried"), BYTES("before"), &result, NULL) == RASPUTIN_OK);
    rasputin_result_free(result);
    rasputin_client *impatient = NULL;
    CHECK(rasputin_client_with_timeout(client, 1000, &impatient, NULL) == RASPUTIN_OK);
    /* The whole cluster stopped: the request goes out and nobody answers. */
    CHECK(signal_cluster(SIGSTOP) == 3);
    rasputin_status status = rasputin_set(impatient, BYTES("retried"), BYTES("after"), &result, &error);
    CHECK(signal_cluster(SIGCONT) == 3);
    CHECK(status == RASPUTIN_ERROR_TIMEOUT);
    const uint8_t *token = NULL;
    size_t token_len = 0;
    CHECK(rasputin_error_retry_token(error, &token, &token_len) == RASPUTIN_OK);
    CHECK(token != NULL && token_len > 0);
    if (token != NULL) {
        CHECK(rasputin_retry(client, token, token_len, &result, NULL) == RASPUTIN_OK);
        CHECK(result->success && value_is(result, "after"));
        rasputin_result_free(result);
    }
    rasputin_error_free(error);
    rasputin_client_free(impatient);
    CHECK(rasputin_get(client, BYTES("retried"), &result, NULL) == RASPUTIN_OK);
    CHECK(value_is(result, "after"));
    rasputin_result_free(result);
}

static void test_retry_token_errors(rasputin_client *client) {
    rasputin_result *result = NULL;
    const uint8_t *token = (const uint8_t *)"x";
    size_t token_len = 7;
    /* Only a timeout carries a token. */
    rasputin_error *error = NULL;
    CHECK(rasputin_get(client, NULL, RASPUTIN_KEY_BYTES_MAX + 1, &result, &error) == RASPUTIN_ERROR_KEY_TOO_LARGE);
    CHECK(rasputin_error_retry_token(error, &token, &token_len) == RASPUTIN_OK);
    CHECK(token == NULL && token_len == 0);
    rasputin_error_free(error);
    CHECK(rasputin_error_retry_token(NULL, &token, &token_len) == RASPUTIN_OK && token_len == 0);
    CHECK(rasputin_error_retry_token(NULL, NULL, &token_len) == RASPUTIN_ERROR_NULL_ARGUMENT);
    EXPECT_ERROR(RASPUTIN_ERROR_INVALID_ARGUMENT, rasputin_retry(client, BYTES("not a token"), &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_retry(client, NULL, 5, &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_retry(NULL, BYTES("x"), &result, &error));
    CHECK(result == NULL);
}

static void test_argument_errors(rasputin_client *client) {
    rasputin_result *result = NULL;
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_get(NULL, BYTES("k"), &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_set(NULL, BYTES("k"), BYTES("v"), &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_cas(NULL, BYTES("k"), BYTES("a"), BYTES("b"), &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_del(NULL, BYTES("k"), &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_get(client, NULL, 3, &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_set(client, BYTES("k"), NULL, 3, &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_get(client, BYTES("k"), NULL, &error));
    CHECK(result == NULL);

    /* Over the limits: refused before the library reads the buffers. */
    size_t big = RASPUTIN_VALUE_BYTES_MAX + 1;
    uint8_t *buffer = calloc(big, 1);
    EXPECT_ERROR(RASPUTIN_ERROR_VALUE_TOO_LARGE, rasputin_set(client, BYTES("k"), buffer, big, &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_KEY_TOO_LARGE, rasputin_get(client, buffer, RASPUTIN_KEY_BYTES_MAX + 1, &result, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_VALUE_TOO_LARGE, rasputin_cas(client, BYTES("k"), BYTES("a"), buffer, SIZE_MAX, &result, &error));
    free(buffer);
    /* Exactly at the limit is fine. */
    uint8_t *largest = calloc(RASPUTIN_VALUE_BYTES_MAX, 1);
    CHECK(rasputin_set(client, BYTES("largest"), largest, RASPUTIN_VALUE_BYTES_MAX, &result, NULL) == RASPUTIN_OK);
    CHECK(result->value_len == RASPUTIN_VALUE_BYTES_MAX);
    rasputin_result_free(result);
    free(largest);

    EXPECT_ERROR(RASPUTIN_ERROR_INVALID_ARGUMENT, rasputin_client_set_timeouts(client, 0, 10, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_client_set_timeouts(NULL, 10, 10, &error));
    CHECK(rasputin_client_set_timeouts(client, 2000, 10000, NULL) == RASPUTIN_OK);
}

static void test_per_call_timeout_handles(rasputin_client *client) {
    rasputin_client *view = NULL;
    rasputin_result *result = NULL;
    CHECK(rasputin_client_with_timeout(client, 5000, &view, NULL) == RASPUTIN_OK);
    CHECK(rasputin_set(view, BYTES("through-view"), BYTES("v"), &result, NULL) == RASPUTIN_OK);
    rasputin_result_free(result);
    rasputin_client_free(view);
    /* The original handle still works after the view is gone. */
    CHECK(rasputin_get(client, BYTES("through-view"), &result, NULL) == RASPUTIN_OK);
    CHECK(value_is(result, "v"));
    rasputin_result_free(result);
    EXPECT_ERROR(RASPUTIN_ERROR_INVALID_ARGUMENT, rasputin_client_with_timeout(client, 0, &view, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_client_with_timeout(NULL, 10, &view, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_client_with_timeout(client, 10, NULL, &error));
}

static void test_unreachable_cluster(void) {
    rasputin_client *client = NULL;
    rasputin_error *error = NULL;
    /* Port 1 on loopback: nothing listens there. */
    CHECK(rasputin_client_new("127.0.0.1:1", 1, &client, &error) == RASPUTIN_OK);
    CHECK(rasputin_client_set_timeouts(client, 50, 300, &error) == RASPUTIN_OK);
    rasputin_result *result = NULL;
    EXPECT_ERROR(RASPUTIN_ERROR_UNAVAILABLE, rasputin_get(client, BYTES("k"), &result, &error));
    CHECK(result == NULL);
    rasputin_client_free(client);
}

#define THREADS 8
#define OPERATIONS_PER_THREAD 50

struct worker {
    rasputin_client *client;
    int number;
    int failures;
};

static void *work(void *argument) {
    struct worker *worker = argument;
    for (int n = 0; n < OPERATIONS_PER_THREAD; n++) {
        char key[32], value[32];
        snprintf(key, sizeof key, "thread-%d-%d", worker->number, n);
        snprintf(value, sizeof value, "value-%d", n);
        rasputin_result *result = NULL;
        rasputin_error *error = NULL;
        if (rasputin_set(worker->client, BYTES(key), BYTES(value), &result, &error) != RASPUTIN_OK) {
            worker->failures++;
            rasputin_error_free(error);
            continue;
        }
        rasputin_result_free(result);
        if (rasputin_get(worker->client, BYTES(key), &result, &error) != RASPUTIN_OK) {
            worker->failures++;
            rasputin_error_free(error);
            continue;
        }
        if (!value_is(result, value)) worker->failures++;
        rasputin_result_free(result);
    }
    return NULL;
}

/* Pages through a prefix two pairs at a time: every key once, in order. */
static void test_scan_pages(rasputin_client *client) {
    const char *keys[] = {"scan-c/0", "scan-c/1", "scan-c/2", "scan-c/3", "scan-c/4"};
    for (int index = 4; index >= 0; index--) {
        rasputin_result *result = NULL;
        CHECK(rasputin_set(client, BYTES(keys[index]), BYTES(keys[index]), &result, NULL) == RASPUTIN_OK);
        rasputin_result_free(result);
    }
    uint8_t start[64] = "scan-c/";
    size_t start_len = strlen("scan-c/");
    int seen = 0, pages = 0;
    for (;;) {
        rasputin_scan_page *page = NULL;
        CHECK(rasputin_scan(client, start, start_len, BYTES("scan-c0"), 2, &page, NULL) == RASPUTIN_OK);
        if (page == NULL) {
            break;
        }
        pages++;
        CHECK(page->count <= 2);
        for (size_t index = 0; index < page->count && seen < 5; index++, seen++) {
            const rasputin_pair *pair = &page->pairs[index];
            CHECK(pair->key_len == strlen(keys[seen]) && memcmp(pair->key, keys[seen], pair->key_len) == 0);
            CHECK(pair->value_len == pair->key_len && memcmp(pair->value, pair->key, pair->key_len) == 0);
        }
        int more = page->has_resume && page->resume_len < sizeof start;
        if (more) {
            memcpy(start, page->resume, page->resume_len);
            start_len = page->resume_len;
        }
        rasputin_scan_page_free(page);
        if (!more) {
            break;
        }
    }
    CHECK(seen == 5);
    CHECK(pages == 3);
    /* No end (NULL) reaches past the prefix; an empty span is an empty page. */
    rasputin_scan_page *page = NULL;
    CHECK(rasputin_scan(client, BYTES("scan-c/4"), NULL, 0, 1, &page, NULL) == RASPUTIN_OK);
    CHECK(page != NULL && page->count == 1 && page->pairs[0].key_len == strlen(keys[4]));
    rasputin_scan_page_free(page);
    page = NULL;
    CHECK(rasputin_scan(client, BYTES("scan-c/3"), BYTES("scan-c/3"), 0, &page, NULL) == RASPUTIN_OK);
    CHECK(page != NULL && page->count == 0 && page->pairs == NULL && !page->has_resume);
    rasputin_scan_page_free(page);
    rasputin_scan_page_free(NULL);
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_scan(client, BYTES("a"), NULL, 0, 0, NULL, &error));
    EXPECT_ERROR(RASPUTIN_ERROR_NULL_ARGUMENT, rasputin_scan(client, NULL, 3, NULL, 0, 0, &page, &error));
    static uint8_t long_key[RASPUTIN_KEY_BYTES_MAX + 1];
    EXPECT_ERROR(RASPUTIN_ERROR_KEY_TOO_LARGE,
                 rasputin_scan(client, BYTES("a"), long_key, sizeof long_key, 0, &page, &error));
}

static void test_threads_share_one_client(rasputin_client *client) {
    pthread_t threads[THREADS];
    struct worker workers[THREADS];
    for (int t = 0; t < THREADS; t++) {
        workers[t] = (struct worker){.client = client, .number = t, .failures = 0};
        CHECK(pthread_create(&threads[t], NULL, work, &workers[t]) == 0);
    }
    for (int t = 0; t < THREADS; t++) {
        pthread_join(threads[t], NULL);
        CHECK(workers[t].failures == 0);
    }
}

int main(void) {
    test_version();
    test_client_new_errors();
    test_unreachable_cluster();
    rasputin_client *client = NULL;
    rasputin_error *error = NULL;
    if (rasputin_client_new(peers(), 4, &client, &error) != RASPUTIN_OK) {
        fprintf(stderr, "cannot create a client: %s\n", rasputin_error_message(error));
        rasputin_error_free(error);
        return 1;
    }
    test_readme_sequence(client);
    test_binary_and_empty_data(client);
    test_found_tells_empty_from_missing(client);
    test_retry_token_errors(client);
    test_retry_after_a_timeout(client);
    test_argument_errors(client);
    test_per_call_timeout_handles(client);
    test_threads_share_one_client(client);
    test_scan_pages(client);
    rasputin_client_free(client);
    printf("%d passed, %d failed\n", passes, failures);
    return failures == 0 ? 0 : 1;
}
