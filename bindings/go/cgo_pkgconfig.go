//go:build !rasputin_manual

package rasputin

// Finds librasputin and its header through pkg-config (rasputin.pc, written
// beside the library by `cargo build -p rasputin-ffi`). Build with
// -tags rasputin_manual to pass CGO_CFLAGS and CGO_LDFLAGS yourself instead.

// #cgo pkg-config: rasputin
import "C"
