/* The README example's sequence, in C, against a cluster at 127.0.0.1:8888. */
#include <assert.h>
#include <stdio.h>
#include <string.h>

#include "rasputin.h"

#define BYTES(text) ((const uint8_t *)(text)), strlen(text)

static int value_is(const rasputin_result *result, const char *expected) {
    return result->value_len == strlen(expected) && memcmp(result->value, expected, result->value_len) == 0;
}

/* Stops with the library's message if a call failed. */
static rasputin_result *must(rasputin_status status, rasputin_result *result, rasputin_error *error) {
    if (status != RASPUTIN_OK) {
        fprintf(stderr, "rasputin: %s\n", rasputin_error_message(error));
        rasputin_error_free(error);
        assert(0);
    }
    return result;
}

int main(void) {
    rasputin_client *cli = NULL;
    rasputin_error *error = NULL;
    rasputin_result *result = NULL;
    if (rasputin_client_new("127.0.0.1:8888", 1, &cli, &error) != RASPUTIN_OK) {
        fprintf(stderr, "rasputin: %s\n", rasputin_error_message(error));
        rasputin_error_free(error);
        return 1;
    }

    rasputin_result_free(must(rasputin_set(cli, BYTES("k1"), BYTES("v1"), &result, &error), result, error));
    result = must(rasputin_get(cli, BYTES("k1"), &result, &error), result, error);
    assert(value_is(result, "v1"));
    rasputin_result_free(result);

    /* CAS returns the current value, and sets the success flag accordingly */
    result = must(rasputin_cas(cli, BYTES("k1"), BYTES("v1"), BYTES("v12"), &result, &error), result, error);
    assert(value_is(result, "v12"));
    rasputin_result_free(result);
    result = must(rasputin_cas(cli, BYTES("k1"), BYTES("vNever"), BYTES("vNever2"), &result, &error), result, error);
    assert(value_is(result, "v12") && !result->success);
    rasputin_result_free(result);
    result = must(rasputin_cas(cli, BYTES("k1"), BYTES("v12"), BYTES("v13"), &result, &error), result, error);
    assert(value_is(result, "v13"));
    rasputin_result_free(result);

    /* deletes return the last value */
    result = must(rasputin_del(cli, BYTES("k1"), &result, &error), result, error);
    assert(value_is(result, "v13"));
    rasputin_result_free(result);
    result = must(rasputin_get(cli, BYTES("k1"), &result, &error), result, error);
    assert(!result->success);
    rasputin_result_free(result);

    rasputin_client_free(cli);
    printf("README example in C: passed\n");
    return 0;
}
