// The README example's sequence, in Go, against 127.0.0.1:8888.
//
//	cd examples/go && PKG_CONFIG_PATH=$PWD/../../target/release go run .
package main

import (
	"errors"
	"fmt"
	"log"

	rasputin "github.com/rasputin-db/rasputin/bindings/go"
)

func check(condition bool, what string) {
	if !condition {
		log.Fatalf("README example failed: %s", what)
	}
}

func main() {
	cli, err := rasputin.Connect([]string{"127.0.0.1:8888"})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()

	check(cli.Set([]byte("k1"), []byte("v1")) == nil, "set")
	value, err := cli.Get([]byte("k1"))
	check(err == nil && string(value) == "v1", "get")

	// CAS returns the current value, and sets the success flag accordingly
	current, _, err := cli.CAS([]byte("k1"), []byte("v1"), []byte("v12"))
	check(err == nil && string(current) == "v12", "cas v1 -> v12")
	current, swapped, err := cli.CAS([]byte("k1"), []byte("vNever"), []byte("vNever2"))
	check(err == nil && string(current) == "v12" && !swapped, "failed cas")
	current, _, err = cli.CAS([]byte("k1"), []byte("v12"), []byte("v13"))
	check(err == nil && string(current) == "v13", "cas v12 -> v13")

	// deletes return the last value
	previous, err := cli.Delete([]byte("k1"))
	check(err == nil && string(previous) == "v13", "delete")
	_, err = cli.Get([]byte("k1"))
	check(errors.Is(err, rasputin.ErrNotFound), "get after delete")

	fmt.Println("README example in Go: passed")
}
