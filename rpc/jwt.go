package rpc

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/taskhub/taskhub"
)

// JWTConfig is how taskhub checks the tokens an app mints for its users: a bearer token that is
// a valid JWT is a user token for the user in its sub claim, who needs no entry in the auth
// file. HS256 tokens are checked with Secret, RS256 and ES256 ones with the keys JWKSURL
// serves (fetched at start, every hour, and again when a token names a key id it does not
// know). exp is required; nbf, and aud when Audience is set, are honoured, with ClockSkew of
// leeway.
//
// The optional claim "taskhub_scope": "watch" makes a token watch-only: it may get, list and
// watch its user's tasks, not create or cancel them (for a browser that only shows progress).
type JWTConfig struct {
	Secret   []byte
	JWKSURL  string
	Audience string
}

// ClockSkew is the leeway allowed on a token's exp and nbf for clocks that disagree.
const ClockSkew = 30 * time.Second

// ScopeWatch is the taskhub_scope of a watch-only token.
const ScopeWatch = "watch"

// Enabled reports whether tokens are checked at all.
func (c JWTConfig) Enabled() bool { return len(c.Secret) > 0 || c.JWKSURL != "" }

// jwtClaims are the claims taskhub reads.
type jwtClaims struct {
	jwt.RegisteredClaims
	Scope string `json:"taskhub_scope,omitempty"`
}

// jwtVerifier checks minted tokens.
type jwtVerifier struct {
	parser *jwt.Parser
	secret []byte
	jwks   keyfunc.Keyfunc // nil without a JWKS URL
	stop   context.CancelFunc
}

// jwtUser is who a valid token names, what it allows, and until when.
type jwtUser struct {
	name    string
	scope   string
	expires time.Time
}

func newJWTVerifier(cfg JWTConfig) (*jwtVerifier, error) {
	v := &jwtVerifier{secret: cfg.Secret, stop: func() {}}
	var methods []string
	if len(cfg.Secret) > 0 {
		if len(cfg.Secret) < 32 {
			return nil, errors.New("jwt: the HS256 secret must have at least 32 bytes")
		}
		methods = append(methods, jwt.SigningMethodHS256.Alg())
	}
	if cfg.JWKSURL != "" {
		ctx, stop := context.WithCancel(context.Background())
		jwks, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
			HTTPTimeout: 10 * time.Second,
			// A key id it does not know sends it to the URL again, at most every 10 s: keys
			// rotate, and a token made with a new key should not wait for the hourly refresh.
			RefreshUnknownKID: rate.NewLimiter(rate.Every(10*time.Second), 1),
			RateLimitWaitMax:  time.Second,
		})
		if err != nil {
			stop()
			return nil, fmt.Errorf("jwt: --jwks-url: %w", err)
		}
		v.jwks, v.stop = jwks, stop
		methods = append(methods, jwt.SigningMethodRS256.Alg(), jwt.SigningMethodES256.Alg())
	}
	opts := []jwt.ParserOption{jwt.WithValidMethods(methods), jwt.WithExpirationRequired(), jwt.WithLeeway(ClockSkew)}
	if cfg.Audience != "" {
		opts = append(opts, jwt.WithAudience(cfg.Audience))
	}
	v.parser = jwt.NewParser(opts...)
	return v, nil
}

// looksLikeJWT tells a JWT (three base64url parts) from the opaque tokens of the auth file.
func looksLikeJWT(token string) bool {
	return strings.Count(token, ".") == 2 && strings.HasPrefix(token, "ey")
}

// verify checks token and returns its user, or an unauthenticated error that says what is
// wrong with it.
func (v *jwtVerifier) verify(ctx context.Context, token string) (jwtUser, error) {
	var claims jwtClaims
	_, err := v.parser.ParseWithClaims(token, &claims, func(t *jwt.Token) (any, error) {
		switch t.Method.(type) {
		case *jwt.SigningMethodHMAC:
			return v.secret, nil
		default:
			return v.jwks.KeyfuncCtx(ctx)(t)
		}
	})
	if err != nil {
		return jwtUser{}, taskhub.Errorf(taskhub.Unauthenticated, "the token %s", jwtProblem(err))
	}
	if err := taskhub.ValidateName(claims.Subject); err != nil {
		return jwtUser{}, taskhub.Errorf(taskhub.Unauthenticated, "the token's sub is not a user name taskhub accepts: %v", err)
	}
	if claims.Scope != "" && claims.Scope != ScopeWatch {
		return jwtUser{}, taskhub.Errorf(taskhub.Unauthenticated, "the token's taskhub_scope %q is unknown: leave it out, or use %q", claims.Scope, ScopeWatch)
	}
	return jwtUser{name: claims.Subject, scope: claims.Scope, expires: claims.ExpiresAt.Time}, nil
}

// jwtProblem says in a few words why a token was refused.
func jwtProblem(err error) string {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return "is malformed"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing) && strings.Contains(err.Error(), "aud claim"):
		return "names no audience (aud): it must name this server's"
	case errors.Is(err, jwt.ErrTokenRequiredClaimMissing):
		return "has no exp: minted tokens must expire"
	case errors.Is(err, jwt.ErrTokenExpired):
		return "has expired: mint a new one"
	case errors.Is(err, jwt.ErrTokenNotValidYet):
		return "is not valid yet (nbf)"
	case errors.Is(err, jwt.ErrTokenInvalidAudience):
		return "is for another audience (aud)"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid) && strings.Contains(err.Error(), "signing method"):
		return "is signed with an algorithm taskhub does not accept here (alg: " + algOf(err) + ")"
	case errors.Is(err, jwt.ErrTokenSignatureInvalid):
		return "has a wrong signature"
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		return "cannot be checked: its key is unknown"
	}
	return "is invalid"
}

func algOf(err error) string {
	_, rest, ok := strings.Cut(err.Error(), "signing method ")
	if !ok {
		return "?"
	}
	alg, _, _ := strings.Cut(rest, " ")
	return alg
}
