//go:build unix

package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"connectrpc.com/connect"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskhubv1 "github.com/taskhub/taskhub/gen/taskhub/v1"
	"github.com/taskhub/taskhub/gen/taskhub/v1/taskhubv1connect"
)

// BenchmarkServer_CallFloor is what a ReportProgress call costs before taskhub does anything:
// BenchmarkServer_ReportProgress's 64 callers (reportAll), clients and transports, against
// servers on 127.0.0.1 that only answer. net/http: a bare handler that reads the request and writes a
// ready answer, the least any Go server built on net/http does for a call. connect: connect-go's
// generated handler for WorkerService, whose ReportProgress makes its answer and returns. Run
// beside BenchmarkServer_ReportProgress, it tells how much of a report's CPU is the call itself
// (docs/benchmarks.md). cpu-µs/call includes the clients' CPU, as there.
func BenchmarkServer_CallFloor(b *testing.B) {
	answer := &taskhubv1.ReportProgressResponse{LeaseExpiresAt: timestamppb.New(time.Now().Add(time.Minute))}
	bin, err := proto.Marshal(answer)
	if err != nil {
		b.Fatal(err)
	}
	js, err := protojson.Marshal(answer)
	if err != nil {
		b.Fatal(err)
	}
	servers := []struct {
		name    string
		handler func(codec string) http.Handler
	}{
		{"net-http", func(codec string) http.Handler {
			body, ctype := bin, "application/proto"
			if codec == "json" {
				body, ctype = js, "application/json"
			}
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if _, err := io.Copy(io.Discard, r.Body); err != nil {
					return
				}
				w.Header().Set("Content-Type", ctype)
				_, _ = w.Write(body)
			})
		}},
		{"connect", func(string) http.Handler {
			_, h := taskhubv1connect.NewWorkerServiceHandler(floorWorker{answer: answer})
			return h
		}},
	}
	for _, tc := range []struct {
		name  string
		http1 bool
		codec string
	}{
		{name: "HTTP2/proto", codec: "proto"},
		{name: "HTTP1/json", http1: true, codec: "json"},
	} {
		for _, s := range servers {
			b.Run(tc.name+"/"+s.name, func(b *testing.B) {
				srv := httptest.NewUnstartedServer(s.handler(tc.codec))
				srv.Config.Protocols = new(http.Protocols)
				srv.Config.Protocols.SetHTTP1(true)
				srv.Config.Protocols.SetUnencryptedHTTP2(true)
				srv.Start()
				b.Cleanup(srv.Close)
				tr := &http.Transport{Protocols: h2cOnly()}
				var opts []connect.ClientOption
				if tc.http1 {
					tr = &http.Transport{Protocols: http1Only(), MaxIdleConnsPerHost: benchReporters + 1}
					opts = append(opts, connect.WithProtoJSON())
				}
				b.Cleanup(tr.CloseIdleConnections)
				work := taskhubv1connect.NewWorkerServiceClient(&http.Client{Transport: tr}, srv.URL, opts...)

				cpu := processCPU(b)
				b.ReportAllocs()
				b.ResetTimer()
				reportAll(b, work, floorClaims, b.N)
				b.StopTimer()
				cpu = processCPU(b) - cpu
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "calls/s")
				b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/call")
			})
		}
	}
}

// floorClaims are benchReporters made-up claims, so that reportAll calls as in
// BenchmarkServer_ReportProgress: the servers answer without looking.
var floorClaims = func() []*taskhubv1.ClaimTaskResponse {
	claims := make([]*taskhubv1.ClaimTaskResponse, benchReporters)
	for i := range claims {
		claims[i] = &taskhubv1.ClaimTaskResponse{Task: &taskhubv1.Task{Id: fmt.Sprintf("01JX%022d", i)}, LeaseToken: "0123456789abcdef0123456789abcdef"}
	}
	return claims
}()

// floorWorker answers every ReportProgress with answer.
type floorWorker struct {
	taskhubv1connect.UnimplementedWorkerServiceHandler
	answer *taskhubv1.ReportProgressResponse
}

func (f floorWorker) ReportProgress(context.Context, *connect.Request[taskhubv1.ReportProgressRequest]) (*connect.Response[taskhubv1.ReportProgressResponse], error) {
	return connect.NewResponse(f.answer), nil
}
