# Copied unmodified (but for these two comment lines) from ../shared/bench/fp16_graph_baseline.py, the project's
# shared PyTorch FP16 baseline for issue 4, so that scripts/device/engine.sh can run it in the same device call.
# Strong FP16 baseline: minimal Llama-3-8B-shaped decoder (random weights), static KV cache, decode step captured in a CUDA graph. Usage: python3 fp16_graph_baseline.py [batch]
import torch, torch.nn.functional as F, time
torch.manual_seed(0); dev="cuda"; dt=torch.float16
L,D,H,KV,FF,V,HD=32,4096,32,8,14336,128256,128
S=2048+256; import sys; B=int(sys.argv[1]) if len(sys.argv)>1 else 1
W=[dict(qkv=torch.randn((H+2*KV)*HD,D,device=dev,dtype=dt)*0.02, o=torch.randn(D,H*HD,device=dev,dtype=dt)*0.02,
        gu=torch.randn(2*FF,D,device=dev,dtype=dt)*0.02, dn=torch.randn(D,FF,device=dev,dtype=dt)*0.02,
        n1=torch.ones(D,device=dev,dtype=dt), n2=torch.ones(D,device=dev,dtype=dt)) for _ in range(L)]
emb=torch.randn(V,D,device=dev,dtype=dt)*0.02; head=torch.randn(V,D,device=dev,dtype=dt)*0.02
kc=torch.zeros(L,B,KV,S,HD,device=dev,dtype=dt); vc=torch.zeros_like(kc)
inv=1.0/(500000**(torch.arange(0,HD,2,device=dev).float()/HD))
def rope(x,pos):
    f=torch.outer(pos.float(),inv)[:,None,:]; c,s=f.cos().to(dt),f.sin().to(dt)
    x1,x2=x[...,:HD//2],x[...,HD//2:]
    return torch.cat([x1*c-x2*s,x1*s+x2*c],-1)
def rms(x,w): return F.rms_norm(x,(D,),w,1e-5)
def forward(tok,pos,mask):
    x=emb[tok]  # [B,T,D]
    T=x.shape[1]
    for i,w in enumerate(W):
        h=rms(x,w['n1'])@w['qkv'].t()
        q,k,v=h.split([H*HD,KV*HD,KV*HD],-1)
        q=rope(q.view(B,T,H,HD),pos).transpose(1,2); k=rope(k.view(B,T,KV,HD),pos).transpose(1,2); v=v.view(B,T,KV,HD).transpose(1,2)
        kc[i].index_copy_(2,pos,k); vc[i].index_copy_(2,pos,v)
        a=F.scaled_dot_product_attention(q,kc[i],vc[i],attn_mask=mask,enable_gqa=True)
        x=x+a.transpose(1,2).reshape(B,T,H*HD)@w['o'].t()
        g,u=(rms(x,w['n2'])@w['gu'].t()).chunk(2,-1)
        x=x+(F.silu(g)*u)@w['dn'].t()
    return rms(x[:,-1:],W[0]['n2'])@head.t()
with torch.no_grad():
    P=2048; tok=torch.randint(0,V,(B,P),device=dev); pos=torch.arange(P,device=dev)
    mask=torch.full((P,S),float('-inf'),device=dev,dtype=dt).triu(1)  # causal over cache
    for _ in range(2): forward(tok,pos,mask)
    torch.cuda.synchronize(); t=time.time(); forward(tok,pos,mask); torch.cuda.synchronize(); print(f"B={B} fp16 eager prefill 2048: {(time.time()-t)*1e3:.1f} ms")
    stok=torch.zeros(B,1,dtype=torch.long,device=dev); spos=torch.tensor([P],device=dev); smask=torch.zeros(1,S,device=dev,dtype=dt)
    s=torch.cuda.Stream(); s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3): out=forward(stok,spos,smask)
    torch.cuda.current_stream().wait_stream(s)
    g=torch.cuda.CUDAGraph()
    with torch.cuda.graph(g): out=forward(stok,spos,smask)
    for _ in range(5): g.replay()
    torch.cuda.synchronize(); t=time.time(); n=256
    for i in range(n):
        spos.fill_(P+i); smask[:, P+i+1:]=float('-inf'); smask[:, :P+i+1]=0; g.replay(); stok.copy_(out.argmax(-1).view(B,1))
    torch.cuda.synchronize(); ms=(time.time()-t)*1e3/n
    wbytes=sum(t.numel()*2 for w in W for t in w.values())+head.numel()*2
    print(f"B={B} fp16 CUDA-graph decode (ctx 2048..2304): {ms:.2f} ms/token ({1e3/ms:.0f} tok/s); weight bytes {wbytes/1e9:.2f} GB -> {wbytes/ms/1e9:.2f} TB/s effective")
