package assets_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/taskhub/taskhub/assets"
)

func get(t *testing.T, path string, header http.Header) *http.Response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	w := httptest.NewRecorder()
	assets.Handler().ServeHTTP(w, req)
	return w.Result()
}

func TestPath(t *testing.T) {
	t.Parallel()
	for name, re := range map[string]string{
		"style.css": `^/assets/style\.[0-9a-f]{12}\.css$`,
		"app.js":    `^/assets/app\.[0-9a-f]{12}\.js$`,
	} {
		require.Regexp(t, regexp.MustCompile(re), assets.Path(name))
	}
	require.Equal(t, "/assets/nope.js", assets.Path("nope.js"), "an unknown name is left as is, so it 404s")
}

func TestHandler(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, ctype string
	}{
		{"app.js", "text/javascript; charset=utf-8"},
		{"style.css", "text/css; charset=utf-8"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			res := get(t, assets.Path(tc.name), nil)
			require.Equal(t, http.StatusOK, res.StatusCode)
			require.Equal(t, "public, max-age=31536000, immutable", res.Header.Get("Cache-Control"))
			require.Equal(t, tc.ctype, res.Header.Get("Content-Type"))
			body, err := io.ReadAll(res.Body)
			require.NoError(t, err)
			require.NotEmpty(t, body)

			etag := res.Header.Get("ETag")
			require.NotEmpty(t, etag)
			res = get(t, assets.Path(tc.name), http.Header{"If-None-Match": {etag}})
			require.Equal(t, http.StatusNotModified, res.StatusCode)
		})
	}
	for _, path := range []string{"/assets/app.js", "/assets/style.css", "/assets/app.000000000000.js", "/assets/", "/assets/../assets.go"} {
		require.Equal(t, http.StatusNotFound, get(t, path, nil).StatusCode, "%s: only hashed names are served", path)
	}
}
