import csv, collections, sys
rows=list(csv.reader(open(sys.argv[1])))
hdr_i=[i for i,r in enumerate(rows) if r and 'Source' in r][0]
hdr=rows[hdr_i]; data=[r for r in rows[hdr_i+1:] if len(r)==len(hdr)]
ix={h:i for i,h in enumerate(hdr)}
iss=ix['Warp Stall Sampling (All Samples)']; iex=ix['Instructions Executed']; isrc=ix['Source']
tot=sum(float(r[iss] or 0) for r in data)
grp=collections.defaultdict(lambda:[0,0,0])
stall_cols=[h for h in hdr if h.startswith('stall_') and 'Not Issued' not in h]
for r in data:
    ex=float(r[iex] or 0); s=float(r[iss] or 0)
    key=int(round(ex/1000))
    grp[key][0]+=s; grp[key][1]+=1; grp[key][2]+=ex
print('total samples', tot)
for k,v in sorted(grp.items(), key=lambda kv:-kv[1][0])[:12]:
    print(f"exec~{k}k  samples {v[0]/tot*100:5.1f}%  ninstr {v[1]}  executed {v[2]:.3g}")
agg={h:sum(float(r[ix[h]] or 0) for r in data) for h in stall_cols}
print(sorted(((round(v/tot*100,1),h) for h,v in agg.items()), reverse=True)[:8])
top=sorted(data,key=lambda r:-float(r[iss] or 0))[:14]
for r in top:
    best=max(stall_cols,key=lambda h: float(r[ix[h]] or 0))
    print(f"{float(r[iss])/tot*100:4.1f}% {r[iex]:>8} {best:18} {r[isrc][:60]}")
