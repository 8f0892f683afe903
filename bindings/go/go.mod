module github.com/rasputin-db/rasputin/bindings/go

go 1.21
