module github.com/rasputin-db/rasputin/ci/porcupine

go 1.21

require github.com/anishathalye/porcupine v1.3.1
