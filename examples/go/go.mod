module github.com/rasputin-db/rasputin/examples/go

go 1.21

require github.com/rasputin-db/rasputin/bindings/go v0.0.0

replace github.com/rasputin-db/rasputin/bindings/go => ../../bindings/go
