// The header must work from C++: this file includes it and takes the
// address of every function, so a missing extern "C" or a C-only construct
// fails the build.
#include "rasputin.h"

#include <cstdio>

int main() {
    const void *functions[] = {
        reinterpret_cast<const void *>(&rasputin_client_new),
        reinterpret_cast<const void *>(&rasputin_client_free),
        reinterpret_cast<const void *>(&rasputin_client_set_timeouts),
        reinterpret_cast<const void *>(&rasputin_client_with_timeout),
        reinterpret_cast<const void *>(&rasputin_set),
        reinterpret_cast<const void *>(&rasputin_get),
        reinterpret_cast<const void *>(&rasputin_cas),
        reinterpret_cast<const void *>(&rasputin_del),
        reinterpret_cast<const void *>(&rasputin_result_free),
        reinterpret_cast<const void *>(&rasputin_error_status),
        reinterpret_cast<const void *>(&rasputin_error_server_code),
        reinterpret_cast<const void *>(&rasputin_error_message),
        reinterpret_cast<const void *>(&rasputin_error_free),
        reinterpret_cast<const void *>(&rasputin_version),
    };
    rasputin_status status = RASPUTIN_OK;
    std::printf("librasputin %s from C++: %zu functions, status %d\n", rasputin_version(),
                sizeof functions / sizeof functions[0], static_cast<int>(status));
    return 0;
}
