// Package assets embeds the static files the pages use and serves them under /assets/.
package assets

import (
	"embed"
	"io/fs"
	"net/http"
)

//go:embed static
var files embed.FS

// Prefix is where the assets are served.
const Prefix = "/assets/"

// Path returns the URL path of an asset.
func Path(name string) string { return Prefix + name }

// Handler serves the assets. They change only with the binary, so clients may cache them for an
// hour.
func Handler() http.Handler {
	static, err := fs.Sub(files, "static")
	if err != nil {
		panic(err) // the embed directive guarantees the directory
	}
	files := http.FileServerFS(static)
	return http.StripPrefix(Prefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Cache-Control", "public, max-age=3600")
		files.ServeHTTP(w, r)
	}))
}
