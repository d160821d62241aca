// Package assets embeds the static files the pages use (the stylesheet and the bundled script,
// which `make generate` builds from src/) and serves them under /assets/ by content-hashed
// names, so browsers may cache them for a year: a changed file gets a new name.
//
// Everything here is read-only after the first use and safe for concurrent use.
package assets

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
	"sync"
	"time"
)

//go:embed static
var files embed.FS

// Prefix is where the assets are served.
const Prefix = "/assets/"

// file is one embedded asset.
type file struct {
	hashed string // name.<hash>.ext
	data   []byte
	etag   string
}

type index struct {
	byName   map[string]*file // style.css
	byHashed map[string]*file // style.1a2b3c4d5e6f.css
}

var load = sync.OnceValue(func() *index {
	ix := &index{byName: map[string]*file{}, byHashed: map[string]*file{}}
	err := fs.WalkDir(files, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := files.ReadFile(p)
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(p, "static/")
		sum := sha256.Sum256(data)
		hash := hex.EncodeToString(sum[:6])
		ext := path.Ext(name)
		f := &file{hashed: strings.TrimSuffix(name, ext) + "." + hash + ext, data: data, etag: `"` + hash + `"`}
		ix.byName[name] = f
		ix.byHashed[f.hashed] = f
		return nil
	})
	if err != nil {
		panic(err) // the files are compiled in: this cannot fail
	}
	return ix
})

// Path returns the URL path of the asset name (such as "app.js"): its content-hashed name
// under Prefix. An unknown name gets a path that is not found, so a typo shows as a 404.
func Path(name string) string {
	if f, ok := load().byName[name]; ok {
		return Prefix + f.hashed
	}
	return Prefix + name
}

// Handler serves the assets by their hashed names, cached for a year as immutable. Compression
// is the caller's choice (the server wraps it in gzhttp).
func Handler() http.Handler {
	ix := load()
	return http.StripPrefix(Prefix, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f, ok := ix.byHashed[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		h := w.Header()
		h.Set("Cache-Control", "public, max-age=31536000, immutable")
		h.Set("ETag", f.etag)
		h.Set("X-Content-Type-Options", "nosniff")
		if ct := mime.TypeByExtension(path.Ext(f.hashed)); ct != "" {
			h.Set("Content-Type", ct)
		}
		http.ServeContent(w, r, f.hashed, time.Time{}, bytes.NewReader(f.data))
	}))
}
