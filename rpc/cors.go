package rpc

import (
	"fmt"
	"net/http"
	"net/url"

	connectcors "connectrpc.com/cors"
	"github.com/rs/cors"
)

// CheckOrigins checks that each of origins is an origin a browser sends: http or https, a
// host, an optional port, nothing else.
func CheckOrigins(origins []string) error {
	for _, o := range origins {
		u, err := url.Parse(o)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" ||
			u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil {
			return fmt.Errorf("allowed origin %q: want scheme://host[:port], such as https://app.example", o)
		}
	}
	return nil
}

// withCORS lets pages of origins call the Connect API: it answers their preflight requests and
// marks the answers, with the methods and headers Connect, gRPC-Web and bearer tokens need.
// Credentials are not allowed: another origin's page sends a bearer token (a minted one, say),
// never the session cookie, which Auth refuses from anywhere but taskhub's own pages anyway.
// Without origins it is next unchanged.
func withCORS(next http.Handler, origins []string) http.Handler {
	if len(origins) == 0 {
		return next
	}
	return cors.New(cors.Options{
		AllowedOrigins: origins,
		AllowedMethods: connectcors.AllowedMethods(),
		AllowedHeaders: append(connectcors.AllowedHeaders(), "Authorization"),
		ExposedHeaders: connectcors.ExposedHeaders(),
		MaxAge:         7200,
	}).Handler(next)
}
